package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/myusta/cdc/internal/health"
	"github.com/myusta/cdc/internal/pgtest"
	"github.com/myusta/cdc/reconcile"
)

// TestVerifyAndReconcile_CLI: drift made in chat while cdc is stopped
// (missing, changed and extra rows, recent and hours old) makes verify --full
// exit 3 and name them; reconcile --full repairs; verify --full exits 0.
func TestVerifyAndReconcile_CLI(t *testing.T) {
	p := pgtest.NewPair(t, 3000)
	env := p.Env()
	c := startCDC(t, env, "run")
	p.WaitEqual(t, 30*time.Second)
	if code := c.stop(t, 40*time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
	code, out := runCDC(t, env, "verify", "--full")
	if code != 0 || !strings.Contains(out, "consistent") {
		t.Fatalf("verify of an exact copy: exit %d\n%s", code, out)
	}

	pgtest.Exec(t, p.Chat, `DELETE FROM users WHERE email LIKE 'user1-%' OR email LIKE 'user2000-%'`)
	pgtest.Exec(t, p.Chat, `UPDATE users SET status = 'tampered' WHERE email LIKE 'user3-%' OR email LIKE 'user2500-%'`)
	pgtest.Exec(t, p.Chat, `INSERT INTO users (id, first_name, updated_at) VALUES
('00000000-0000-0000-0000-0000000000e1', 'ghost', now()), ('00000000-0000-0000-0000-0000000000e2', 'ghost', now() - interval '3 days')`)

	code, out = runCDC(t, env, "verify", "--full", "--json")
	if code != exitDrift {
		t.Fatalf("verify with drift: exit %d, want %d\n%s", code, exitDrift, out)
	}
	// stdout holds the report; log lines (stderr, here in the same
	// buffer) say that verify looked again.
	if !strings.Contains(out, "rows differ: looking again in 2s, since they may be changes still in flight") {
		t.Errorf("verify does not say why it waits:\n%s", out)
	}
	var rep reconcile.Report
	i := strings.Index(out, "{\n")
	if i < 0 {
		t.Fatalf("verify --json printed no report:\n%s", out)
	}
	if err := json.NewDecoder(strings.NewReader(out[i:])).Decode(&rep); err != nil {
		t.Fatalf("verify --json: %v\n%s", err, out)
	}
	if rep.Missing != 2 || rep.Stale != 2 || rep.Extra != 2 || rep.Difference != 0 || rep.Consistent {
		t.Fatalf("verify report: %+v", rep)
	}
	for _, id := range []string{"00000000-0000-0000-0000-0000000000e1", "00000000-0000-0000-0000-0000000000e2"} {
		if !strings.Contains(out, `"id": "`+id+`"`) {
			t.Errorf("verify does not name %s:\n%s", id, out)
		}
	}

	code, out = runCDC(t, env, "reconcile", "--full", "--dry-run")
	if code != 0 || !strings.Contains(out, "would repair 6: 2 missing, 2 stale, 2 extra") {
		t.Fatalf("reconcile --dry-run: exit %d\n%s", code, out)
	}
	code, out = runCDC(t, env, "reconcile", "--full")
	if code != 0 || !strings.Contains(out, "repaired 6: 2 missing, 2 stale, 2 extra") {
		t.Fatalf("reconcile --full: exit %d\n%s", code, out)
	}
	p.WaitEqual(t, time.Second)
	if code, out = runCDC(t, env, "verify", "--full"); code != 0 {
		t.Fatalf("verify after repair: exit %d\n%s", code, out)
	}
	if code, out = runCDC(t, env, "reconcile", "--since", "2h", "--full"); code != exitUsage {
		t.Fatalf("two modes: exit %d\n%s", code, out)
	}
}

// TestRun_ReconcilerRepairsRecentDrift: with a 3-second interval, recent
// rows damaged in chat behind cdc's back are repaired within a few
// intervals, while cdc streams.
func TestRun_ReconcilerRepairsRecentDrift(t *testing.T) {
	p := pgtest.NewPair(t, 1000)
	env := with(p.Env(), "SYNC_INTERVAL_MINUTES", "0.05", "LOG_LEVEL", "info")
	c := startCDC(t, env, "run")
	p.WaitEqual(t, 30*time.Second)
	pgtest.Exec(t, p.Source, `UPDATE users SET status = 'fresh', updated_at = now() WHERE email LIKE 'user7%'`)
	p.WaitEqual(t, 30*time.Second)
	pgtest.Exec(t, p.Chat, `UPDATE users SET status = 'corrupt' WHERE email LIKE 'user7%'`)
	pgtest.Exec(t, p.Chat, `DELETE FROM users WHERE email LIKE 'user77%'`)
	p.WaitEqual(t, 20*time.Second)
	c.waitOutput(t, `"msg":"reconcile window"`, 10*time.Second)
	// Repairs beside a live stream are a signal: WARN, and DEGRADED for a while.
	c.waitOutput(t, `"level":"WARN","msg":"the scheduled reconciler repaired rows the change stream had not delivered`, 20*time.Second)
	waitHealth(t, "http://"+httpAddr(t, c), 10*time.Second, "DEGRADED by the repairs", func(st *health.Stats, ready int) bool {
		ch := st.HealthStatus.Checks[health.CheckReconcile]
		return st.HealthStatus.Status == health.Degraded && ch.Status == health.Warn && strings.Contains(ch.Message, "repaired") &&
			st.Reconcile.LastRepairRows > 0
	})
	if code := c.stop(t, 40*time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if !strings.Contains(c.out.String(), `"stale":`) {
		t.Fatalf("no reconcile summary in the log:\n%s", c.out.String())
	}
}
