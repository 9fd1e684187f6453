package logging_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/myusta/cdc/internal/logging"
)

func TestRedactDSN_MasksPasswords(t *testing.T) {
	tests := []struct {
		name     string
		dsn      string
		secrets  []string // must not appear in the result
		want     string   // exact result when not ""
		contains []string // parts of the DSN that must survive
	}{
		{
			name: "url user:pass", dsn: "postgres://app:Sup3rSecret@db.example:5432/myusta?sslmode=require",
			secrets: []string{"Sup3rSecret"},
			want:    "postgres://app:xxxxx@db.example:5432/myusta?sslmode=require",
		},
		{
			name: "postgresql scheme", dsn: "postgresql://app:Sup3rSecret@localhost/db",
			secrets: []string{"Sup3rSecret"},
			want:    "postgresql://app:xxxxx@localhost/db",
		},
		{
			name: "url percent-encoded password", dsn: "postgres://app:p%40ss%3Aw0rd@localhost/db",
			secrets: []string{"p%40ss%3Aw0rd", "p@ss:w0rd"},
			want:    "postgres://app:xxxxx@localhost/db",
		},
		{
			name: "url with @ in password", dsn: "postgres://app:p@ssw0rd@localhost/db",
			secrets:  []string{"p@ssw0rd", "ssw0rd"},
			contains: []string{"app:xxxxx@localhost/db"},
		},
		{
			name: "url password query parameter", dsn: "postgres://app@localhost/db?sslmode=disable&password=Sup3rSecret",
			secrets:  []string{"Sup3rSecret"},
			contains: []string{"postgres://app@localhost/db?", "password=xxxxx", "sslmode=disable"},
		},
		{
			name: "url both userinfo and query", dsn: "postgres://app:First1@localhost/db?password=Second2",
			secrets:  []string{"First1", "Second2"},
			contains: []string{"app:xxxxx@localhost/db", "password=xxxxx"},
		},
		{
			name: "url multiple hosts", dsn: "postgres://app:Sup3rSecret@h1:5432,h2:5433/db",
			secrets: []string{"Sup3rSecret"},
			want:    "postgres://app:xxxxx@h1:5432,h2:5433/db",
		},
		{
			name: "url ipv6 host", dsn: "postgres://app:Sup3rSecret@[::1]:5432/db",
			secrets: []string{"Sup3rSecret"},
			want:    "postgres://app:xxxxx@[::1]:5432/db",
		},
		{
			name: "kv", dsn: "host=x password=secret user=y",
			secrets: []string{"secret"},
			want:    "host=x password=xxxxx user=y",
		},
		{
			name: "kv quoted with space", dsn: "host=x password='se cret' user=y",
			secrets: []string{"se cret", "cret"},
			want:    "host=x password=xxxxx user=y",
		},
		{
			name: "kv quoted with escaped quote", dsn: `host=x password='it\'s secret' user=y dbname=z`,
			secrets: []string{"secret", `it\'s`},
			want:    "host=x password=xxxxx user=y dbname=z",
		},
		{
			name: "kv upper case and spaces around =", dsn: "host=x PASSWORD = secret user=y",
			secrets: []string{"secret"},
			want:    "host=x PASSWORD = xxxxx user=y",
		},
		{
			name: "kv password last", dsn: "host=x user=y password=secret",
			secrets: []string{"secret"},
			want:    "host=x user=y password=xxxxx",
		},
		{
			name: "kv password first", dsn: "password=secret host=x",
			secrets: []string{"secret"},
			want:    "password=xxxxx host=x",
		},
		// DSNs pgconn.ParseConfig accepts (so they pass config validation
		// and reach the "cdc starting" log line) although net/url rejects
		// them.
		{
			name: "url password with #", dsn: "postgres://app:Sup3r#Secret@localhost/db",
			secrets: []string{"Sup3r#Secret", "Secret"},
		},
		{
			name: "url password with ?", dsn: "postgres://app:Sup3r?Secret@localhost/db",
			secrets: []string{"Sup3r?Secret", "Secret"},
		},
		{
			name: "url password with ^", dsn: "postgres://app:Sup3r^Secret@localhost/db",
			secrets: []string{"Sup3r^Secret", "Secret"},
		},
		{
			name: "kv unquoted escaped space", dsn: `host=x password=Sup3r\ Secret user=y`,
			secrets: []string{"Sup3r", "Secret"},
		},
		// Malformed URL (rejected by config with a redacted message, but
		// RedactDSN promises never to return the password).
		{
			name: "malformed url bad port", dsn: "postgres://u:Sup3rSecret@host:notaport/db",
			secrets: []string{"Sup3rSecret"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := logging.RedactDSN(tt.dsn)
			var problems []string
			for _, s := range tt.secrets {
				if strings.Contains(got, s) {
					problems = append(problems, "contains secret "+strconv.Quote(s))
				}
			}
			if tt.want != "" && got != tt.want {
				problems = append(problems, "want "+strconv.Quote(tt.want))
			}
			for _, c := range tt.contains {
				if !strings.Contains(got, c) {
					problems = append(problems, "lacks "+strconv.Quote(c))
				}
			}
			if !strings.Contains(got, "xxxxx") {
				problems = append(problems, "has no mask")
			}
			if len(problems) == 0 {
				return
			}
			msg := "RedactDSN(" + strconv.Quote(tt.dsn) + ") = " + strconv.Quote(got) + ": " + strings.Join(problems, "; ")
			t.Error(msg)
		})
	}
}

// TestRedactDSN_OddInputsAreValidDSNs documents that the odd URL inputs
// above are real configurations: pgconn accepts them and reads the full
// password, so config.Load lets them through.
func TestRedactDSN_OddInputsAreValidDSNs(t *testing.T) {
	tests := []struct{ dsn, password string }{
		{"postgres://app:Sup3r#Secret@localhost/db", "Sup3r#Secret"},
		{"postgres://app:Sup3r?Secret@localhost/db", "Sup3r?Secret"},
		{"postgres://app:Sup3r^Secret@localhost/db", "Sup3r^Secret"},
		{`host=x password=Sup3r\ Secret user=y`, "Sup3r Secret"},
	}
	for _, tt := range tests {
		t.Run(tt.dsn, func(t *testing.T) {
			cfg, err := pgconn.ParseConfig(tt.dsn)
			if err != nil {
				t.Skipf("pgconn no longer accepts %q: %v", tt.dsn, err)
			}
			if cfg.Password != tt.password {
				t.Errorf("pgconn password = %q, want %q", cfg.Password, tt.password)
			}
		})
	}
}

func TestRedactDSN_LeavesDSNsWithoutPasswordUnchanged(t *testing.T) {
	tests := []string{
		"",
		"postgres://app@localhost:5432/db?sslmode=disable",
		"postgresql://localhost/db",
		"postgres://app@h1:5432,h2:5433/db",
		"host=x user=y dbname=z",
		"host=/var/run/postgresql dbname=myusta_backend sslmode=disable",
	}
	for _, dsn := range tests {
		t.Run(dsn, func(t *testing.T) {
			if got := logging.RedactDSN(dsn); got != dsn {
				t.Errorf("RedactDSN(%q) = %q, want it unchanged", dsn, got)
			}
		})
	}
}

// lines splits output into non-empty lines.
func lines(s string) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		if l := sc.Text(); l != "" {
			out = append(out, l)
		}
	}
	return out
}

func TestNew_JSON(t *testing.T) {
	tests := []struct {
		name       string
		format     string
		level      slog.Level
		wantLevels []string // levels written, in order, for Debug, Info, Warn, Error
	}{
		{"json info", "json", slog.LevelInfo, []string{"INFO", "WARN", "ERROR"}},
		{"json debug", "json", slog.LevelDebug, []string{"DEBUG", "INFO", "WARN", "ERROR"}},
		{"json warn", "json", slog.LevelWarn, []string{"WARN", "ERROR"}},
		{"json error", "json", slog.LevelError, []string{"ERROR"}},
		{"auto on a buffer is json", "auto", slog.LevelInfo, []string{"INFO", "WARN", "ERROR"}},
		{"empty format is json", "", slog.LevelWarn, []string{"WARN", "ERROR"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			log := logging.New(&buf, tt.level, tt.format)
			log.Debug("m", "k", "v")
			log.Info("m", "k", "v")
			log.Warn("m", "k", "v")
			log.Error("m", "k", "v")

			ls := lines(buf.String())
			if len(ls) != len(tt.wantLevels) {
				t.Fatalf("got %d lines, want %d:\n%s", len(ls), len(tt.wantLevels), buf.String())
			}
			for i, l := range ls {
				var rec map[string]any
				if err := json.Unmarshal([]byte(l), &rec); err != nil {
					t.Fatalf("line %d is not JSON: %v: %q", i, err, l)
				}
				if rec["level"] != tt.wantLevels[i] || rec["msg"] != "m" || rec["k"] != "v" {
					t.Errorf("line %d = %v, want level %s msg m k v", i, rec, tt.wantLevels[i])
				}
				if _, ok := rec["time"]; !ok {
					t.Errorf("line %d has no time: %v", i, rec)
				}
			}
		})
	}
}

func TestNew_Text(t *testing.T) {
	tests := []struct {
		name    string
		level   slog.Level
		want    []string
		notWant []string
	}{
		{"info", slog.LevelInfo, []string{"INF hello k=v", "WRN careful"}, []string{"DBG", "hidden"}},
		{"warn", slog.LevelWarn, []string{"WRN careful"}, []string{"INF", "hello"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			log := logging.New(&buf, tt.level, "text")
			log.Debug("hidden")
			log.Info("hello", "k", "v")
			log.Warn("careful")
			out := buf.String()
			for _, l := range lines(out) {
				if json.Valid([]byte(l)) {
					t.Errorf("text format wrote JSON: %q", l)
				}
			}
			if strings.Contains(out, "\x1b[") {
				t.Errorf("text output to a non-terminal has colour escapes: %q", out)
			}
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			for _, w := range tt.notWant {
				if strings.Contains(out, w) {
					t.Errorf("output has %q:\n%s", w, out)
				}
			}
		})
	}
}

func TestNew_AutoOnRegularFileIsJSON(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "log"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	logging.New(f, slog.LevelInfo, "auto").Info("to file")
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	data, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	var rec map[string]any
	if err := json.Unmarshal(bytes.TrimSpace(data), &rec); err != nil || rec["msg"] != "to file" {
		t.Errorf("auto on a regular file: got %q (err %v), want a JSON line with msg \"to file\"", data, err)
	}
}

func TestNew_LevelerIsDynamic(t *testing.T) {
	for _, format := range []string{"json", "text"} {
		t.Run(format, func(t *testing.T) {
			var buf bytes.Buffer
			var lv slog.LevelVar
			lv.Set(slog.LevelWarn)
			log := logging.New(&buf, &lv, format)
			log.Info("first")
			lv.Set(slog.LevelDebug)
			log.Debug("second")
			out := buf.String()
			if strings.Contains(out, "first") || !strings.Contains(out, "second") {
				t.Errorf("LevelVar changes not honoured:\n%s", out)
			}
		})
	}
}

// TestNew_JSONValuesAsPeopleReadThem: durations are Go duration strings
// and WAL positions PostgreSQL's X/Y form, in JSON as in text.
func TestNew_JSONValuesAsPeopleReadThem(t *testing.T) {
	var buf bytes.Buffer
	logging.New(&buf, slog.LevelInfo, "json").With("component", "stream").
		Info("m", "retry_in", 871*time.Millisecond, "applied_lsn", pglogrepl.LSN(0x2C33C20), "n", 3)
	var rec map[string]any
	if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
		t.Fatal(err)
	}
	if rec["retry_in"] != "871ms" || rec["applied_lsn"] != "0/2C33C20" || rec["n"] != float64(3) {
		t.Errorf("line %s: want retry_in 871ms, applied_lsn 0/2C33C20, n 3", buf.String())
	}
}
