package replication_test

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/myusta/cdc/internal/pglocal"
	"github.com/myusta/cdc/internal/pgtest"
	"github.com/myusta/cdc/replication"
)

// logLines runs LogFeatures against p's source and returns the JSON lines
// it logged.
func logLines(t *testing.T, p *pgtest.Pair, usesSlot bool) []map[string]any {
	t.Helper()
	var buf bytes.Buffer
	replication.LogFeatures(t.Context(), slog.New(slog.NewJSONHandler(&buf, nil)), p.Source, usesSlot)
	var lines []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("log line %q: %v", l, err)
		}
		lines = append(lines, m)
	}
	return lines
}

// checkFeatures checks what ReadFeatures and LogFeatures say of a server
// of major version major.
func checkFeatures(t *testing.T, p *pgtest.Pair, major int) replication.Features {
	t.Helper()
	f, err := replication.ReadFeatures(t.Context(), p.Source)
	if err != nil {
		t.Fatal(err)
	}
	var version string
	if err := p.Source.QueryRow(t.Context(), "SELECT split_part(current_setting('server_version'), ' ', 1)").Scan(&version); err != nil {
		t.Fatal(err)
	}
	if f.Major != major || f.Version != version {
		t.Fatalf("ReadFeatures: major %d version %q, want %d %q", f.Major, f.Version, major, version)
	}
	want := map[string]bool{
		"slot_on_standby": major >= 16, "origin_filter": major >= 16,
		"failover_slots": major >= 17, "inactive_since": major >= 17,
		"generated_columns_in_publication": major >= 18,
	}
	lines := logLines(t, p, true)
	info := lines[0]
	t.Logf("PostgreSQL %d: %v", major, info)
	if info["level"] != "INFO" || info["msg"] != "source features" || info["version"] != version {
		t.Fatalf("first log line: %v, want INFO source features version=%s", info, version)
	}
	for k, v := range want {
		if info[k] != v {
			t.Errorf("%s = %v, want %v (PostgreSQL %d)", k, info[k], v, major)
		}
	}
	if major < 18 && info["idle_replication_slot_timeout"] != false {
		t.Errorf("idle_replication_slot_timeout = %v before 18, want false", info["idle_replication_slot_timeout"])
	}
	return f
}

// TestFeatures_Default reads the features of the default server (15 in
// CI, or PG_BIN_SOURCE's), which has no idle slot timeout to warn about.
func TestFeatures_Default(t *testing.T) {
	p := pgtest.NewBarePair(t, pgtest.Server(t), 0)
	major := pgtest.Major(t, p.Source)
	f := checkFeatures(t, p, major)
	if f.IdleSlotTimeoutAfter != 0 {
		t.Fatalf("idle slot timeout %s on the test server, want 0", f.IdleSlotTimeoutAfter)
	}
	if lines := logLines(t, p, true); len(lines) != 1 {
		t.Fatalf("logged %d lines, want only the features: %v", len(lines), lines)
	}
}

// TestFeatures_18 reads the features of PostgreSQL 18 with
// idle_replication_slot_timeout set: its value is logged, with a WARN in
// replication mode only (notify mode has no slot to lose).
func TestFeatures_18(t *testing.T) {
	srv, err := pglocal.Start(t.Context(), pglocal.Options{Fast: true, Bin: pgtest.BinFor(t, 18),
		Settings: map[string]string{"idle_replication_slot_timeout": "90min"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Stop() })
	p := pgtest.NewBarePair(t, srv, 0)
	f := checkFeatures(t, p, 18)
	if f.IdleSlotTimeout != "90min" || f.IdleSlotTimeoutAfter != 90*time.Minute {
		t.Fatalf("idle slot timeout %q (%s), want 90min", f.IdleSlotTimeout, f.IdleSlotTimeoutAfter)
	}
	lines := logLines(t, p, true)
	if len(lines) != 2 || lines[0]["idle_replication_slot_timeout"] != "90min" {
		t.Fatalf("log lines %v, want the features with idle_replication_slot_timeout=90min and a WARN", lines)
	}
	warn, _ := lines[1]["msg"].(string)
	if lines[1]["level"] != "WARN" || !strings.Contains(warn, "90min") || !strings.Contains(warn, "cdc must not be stopped") {
		t.Fatalf("second log line %v, want a WARN that cdc must not be stopped longer than 90min", lines[1])
	}
	if lines := logLines(t, p, false); len(lines) != 1 {
		t.Fatalf("notify mode logged %d lines, want no WARN: %v", len(lines), lines)
	}
}
