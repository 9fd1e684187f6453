package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/myusta/cdc/internal/health"
	"github.com/myusta/cdc/internal/pglocal"
	"github.com/myusta/cdc/internal/pgtest"
)

// httpAddr returns the address cdc's HTTP server listens on, from its
// "http listening" log line (tests use HTTP_ADDR=127.0.0.1:0).
func httpAddr(t *testing.T, c *proc) string {
	t.Helper()
	c.waitOutput(t, `"msg":"http listening"`, 30*time.Second)
	for _, line := range strings.Split(c.out.String(), "\n") {
		if !strings.Contains(line, `"msg":"http listening"`) {
			continue
		}
		var m struct {
			Addr string `json:"addr"`
		}
		if err := json.Unmarshal([]byte(line), &m); err != nil || m.Addr == "" {
			t.Fatalf("http listening line without addr: %s (%v)", line, err)
		}
		return m.Addr
	}
	t.Fatal("no http listening line")
	return ""
}

// httpGet returns the status code and body of GET url.
func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return resp.StatusCode, string(body)
}

// waitHealth polls /stats and /readyz until cond holds, failing the test
// with the last state after timeout.
func waitHealth(t *testing.T, base string, timeout time.Duration, what string, cond func(st *health.Stats, ready int) bool) *health.Stats {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last string
	for {
		st, _, err := health.Fetch(context.Background(), base)
		if err == nil {
			code, body := httpGet(t, base+"/readyz")
			if cond(st, code) {
				return st
			}
			last = fmt.Sprintf("status %s, /readyz %d %q, checks %+v", st.HealthStatus.Status, code, strings.TrimSpace(body), st.HealthStatus.Checks)
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s; last: %s", what, timeout, last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func healthyAndReady(st *health.Stats, ready int) bool {
	return st.HealthStatus.Status == health.Healthy && ready == http.StatusOK
}

// metricValue returns a sample's value (see health.Value) or fails.
func metricValue(t *testing.T, families map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	t.Helper()
	v, ok := health.Value(families, name, labels...)
	if !ok {
		t.Fatalf("/metrics has no %s%v", name, labels)
	}
	return v
}

// TestHealth_ChatOutage runs cdc with the chat database on a server of its
// own, checks HEALTHY and ready with live metrics, stops the chat server
// while a change is in flight (/readyz 503, UNHEALTHY naming the chat
// database, cdc status exit 1), starts it again and checks cdc goes back
// to HEALTHY and ready by itself.
func TestHealth_ChatOutage(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	chatSrv, err := pglocal.Start(ctx, pglocal.Options{Fast: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = chatSrv.Stop() })
	p := pgtest.NewSplitPair(t, pgtest.Server(t), chatSrv, 1000)
	env := with(p.Env(), "SYNC_INTERVAL_MINUTES", "0.05", "LOG_LEVEL", "info")
	c := startCDC(t, env, "run")
	addr := httpAddr(t, c)
	base := "http://" + addr
	statusEnv := with(env, "HTTP_ADDR", addr)
	p.WaitEqual(t, 30*time.Second)

	pgtest.Exec(t, p.Source, `UPDATE users SET status = 'health', updated_at = now()`)
	p.WaitEqual(t, 30*time.Second)
	st := waitHealth(t, base, 45*time.Second, "HEALTHY, ready, one reconcile run, the slot read", func(st *health.Stats, ready int) bool {
		return healthyAndReady(st, ready) && st.Reconcile.Runs > 0 && st.Slot != nil && st.Slot.Exists
	})
	if st.Mode != "replication" || st.AppliedLSN == nil || st.TotalSynced < 1000 || !st.IsRealTimeActive || st.HealthStatus.Checks[health.CheckSlot].Status != health.Pass {
		t.Errorf("/stats: mode %s lsn %v synced %d realtime %v slot %+v", st.Mode, st.AppliedLSN, st.TotalSynced, st.IsRealTimeActive, st.HealthStatus.Checks[health.CheckSlot])
	}
	families, err := health.Scrape(ctx, base)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []struct {
		name   string
		labels []string
		min    float64
	}{
		{"cdc_changes_applied_total", []string{"op", "upsert"}, 1000},
		{"cdc_apply_latency_seconds", nil, 1},
		{"cdc_batch_changes", nil, 1},
		{"cdc_reconcile_runs_total", []string{"kind", "window"}, 1},
		{"cdc_pool_max_conns", []string{"pool", "chat"}, 10},
		{"cdc_database_up", []string{"database", "chat"}, 1},
		{"cdc_slot_retained_bytes", nil, 1},
		{"cdc_applied_lsn", nil, 1},
		{"go_goroutines", nil, 1},
	} {
		if got := metricValue(t, families, m.name, m.labels...); got < m.min {
			t.Errorf("%s%v = %v, want at least %v", m.name, m.labels, got, m.min)
		}
	}
	if code, out := runCDC(t, statusEnv, "status"); code != 0 || !strings.Contains(out, ": HEALTHY") || !strings.Contains(out, "applied LSN") {
		t.Errorf("cdc status while healthy: exit %d\n%s", code, out)
	}
	code, out := runCDC(t, statusEnv, "status", "--json")
	var doc map[string]any
	if code != 0 || json.Unmarshal([]byte(out), &doc) != nil || doc["healthStatus"] == nil {
		t.Errorf("cdc status --json: exit %d\n%s", code, out)
	}

	if err := chatSrv.Halt(pglocal.FastStop); err != nil {
		t.Fatal(err)
	}
	pgtest.Exec(t, p.Source, `UPDATE users SET status = 'during outage', updated_at = now() WHERE email LIKE 'user2%'`)
	st = waitHealth(t, base, 30*time.Second, "UNHEALTHY and not ready with chat stopped", func(st *health.Stats, ready int) bool {
		return st.HealthStatus.Status == health.Unhealthy && ready == http.StatusServiceUnavailable &&
			st.HealthStatus.Checks[health.CheckDatabases].Status == health.Fail && st.ConsecutiveFailures > 0
	})
	if msg := st.HealthStatus.Checks[health.CheckDatabases].Message; !strings.Contains(msg, "chat database unreachable") {
		t.Errorf("databases check: %q, want it to name chat", msg)
	}
	if !st.IsSyncInProgress || st.LagSeconds <= 0 || len(st.HealthStatus.Recommendations) == 0 || st.HealthStatus.Recommendations[0] == health.AllOK {
		t.Errorf("during the outage: in progress %v, lag %.1fs, recommendations %q", st.IsSyncInProgress, st.LagSeconds, st.HealthStatus.Recommendations)
	}
	if code, out := runCDC(t, statusEnv, "status"); code != 1 || !strings.Contains(out, "UNHEALTHY") {
		t.Errorf("cdc status during the outage: exit %d, want 1\n%s", code, out)
	}

	if err := chatSrv.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	p.Chat.Reset()
	p.WaitEqual(t, 60*time.Second)
	st = waitHealth(t, base, 60*time.Second, "HEALTHY and ready again", healthyAndReady)
	if st.Errors == 0 || st.ConsecutiveFailures != 0 {
		t.Errorf("after the outage: errors %d, consecutive %d; want the failed write counted and the streak over", st.Errors, st.ConsecutiveFailures)
	}
	if code, out := runCDC(t, statusEnv, "status"); code != 0 {
		t.Errorf("cdc status after the outage: exit %d\n%s", code, out)
	}
	if code := c.stop(t, 40*time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

// TestHealth_NotifyMode checks /stats and /metrics in notify mode: no LSN,
// no byte lag, no slot check, and changes counted.
func TestHealth_NotifyMode(t *testing.T) {
	p := pgtest.NewPair(t, 200)
	env := notifyEnv(p)
	migrateNotifyMode(t, env)
	c := startCDC(t, env, "run")
	base := "http://" + httpAddr(t, c)
	p.WaitEqual(t, 30*time.Second)
	pgtest.Exec(t, p.Source, `UPDATE users SET status = 'notify', updated_at = now() WHERE email LIKE 'user1%'`)
	p.WaitEqual(t, 30*time.Second)
	st := waitHealth(t, base, 30*time.Second, "HEALTHY and ready with the updates counted", func(st *health.Stats, ready int) bool {
		return healthyAndReady(st, ready) && st.Applied.Upserts >= 111
	})
	if _, ok := st.HealthStatus.Checks[health.CheckSlot]; st.Mode != "notify" || st.AppliedLSN != nil || st.LagBytes != nil || ok || st.Slot != nil {
		t.Errorf("notify mode /stats: mode %s lsn %v lagBytes %v slot %v checks %v", st.Mode, st.AppliedLSN, st.LagBytes, st.Slot, st.HealthStatus.Checks)
	}
	families, err := health.Scrape(context.Background(), base)
	if err != nil {
		t.Fatal(err)
	}
	if got := metricValue(t, families, "cdc_changes_applied_total", "op", "upsert"); got < 111 {
		t.Errorf("cdc_changes_applied_total{op=upsert} = %v, want at least 111", got)
	}
	if metricValue(t, families, "cdc_info", "mode", "notify") != 1 || families["cdc_applied_lsn"] != nil || families["cdc_slot_retained_bytes"] != nil {
		t.Errorf("notify mode metrics: info %v, applied_lsn %v, slot %v", families["cdc_info"], families["cdc_applied_lsn"], families["cdc_slot_retained_bytes"])
	}
	if code := c.stop(t, 40*time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

// TestHealth_PortInUse checks that a busy HTTP_ADDR stops cdc run at once
// with exit 1 and a line naming HTTP_ADDR.
func TestHealth_PortInUse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	env := map[string]string{
		"SOURCE_DATABASE_URL": "postgres://cdc@127.0.0.1:1/src", "CHAT_DATABASE_URL": "postgres://cdc@127.0.0.1:1/chat",
		"HTTP_ADDR": ln.Addr().String(), "LOG_FORMAT": "json",
	}
	code, out := runCDC(t, env, "run")
	if code != exitFailure || !strings.Contains(out, "cdc: HTTP_ADDR "+ln.Addr().String()) || !strings.Contains(out, "in use") {
		t.Fatalf("cdc run on a busy port: exit %d, want 1 and a line naming HTTP_ADDR\n%s", code, out)
	}
}

// TestStatus_Unreachable checks cdc status when no cdc runs there.
func TestStatus_Unreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // a port nobody listens on
	code, out := runCDC(t, map[string]string{"HTTP_ADDR": addr}, "status")
	if code != exitFailure || !strings.Contains(out, "could not reach cdc at http://"+addr) || !strings.Contains(out, "`cdc run` must be running") {
		t.Fatalf("cdc status with nothing listening: exit %d\n%s", code, out)
	}
}

// TestHealth_RefusedStatementKeepsTheSlot: a chat table changed under cdc
// (a synced column dropped) makes every write fail the same way. cdc says
// so at ERROR, health is UNHEALTHY naming the error, the slot is kept (never
// dropped and recreated), and once the column is back cdc resumes by itself
// without losing a change.
func TestHealth_RefusedStatementKeepsTheSlot(t *testing.T) {
	p := pgtest.NewPair(t, 200)
	env := with(p.Env(), "SYNC_INTERVAL_MINUTES", "60", "FULL_RECONCILE_INTERVAL", "0", "LOG_LEVEL", "info")
	c := startCDC(t, env, "run")
	base := "http://" + httpAddr(t, c)
	p.WaitEqual(t, 30*time.Second)

	pgtest.Exec(t, p.Chat, "ALTER TABLE users DROP COLUMN phone")
	pgtest.Exec(t, p.Source, "UPDATE users SET phone = '+1-refused', updated_at = now() WHERE first_name = 'First7'")
	waitHealth(t, base, 30*time.Second, "UNHEALTHY naming the refused statement", func(st *health.Stats, ready int) bool {
		ch := st.HealthStatus.Checks[health.CheckStream]
		return st.HealthStatus.Status == health.Unhealthy && ready != http.StatusOK && strings.Contains(ch.Message, `column "phone"`)
	})
	c.waitOutput(t, "the stream stopped on an error no retry fixes", 10*time.Second)
	time.Sleep(3 * time.Second) // several retries at RETRY_MAX_DELAY (1 s here)
	if n := strings.Count(c.out.String(), "created replication slot"); n != 1 {
		t.Fatalf("the slot was created %d times, want once", n)
	}

	pgtest.Exec(t, p.Chat, "ALTER TABLE users ADD COLUMN phone text")
	waitHealth(t, base, 30*time.Second, "HEALTHY again", func(st *health.Stats, ready int) bool { return healthyAndReady(st, ready) })
	deadline := time.Now().Add(30 * time.Second)
	for {
		var phone *string
		err := p.Chat.QueryRow(context.Background(), "SELECT phone FROM users WHERE first_name = 'First7'").Scan(&phone)
		if err == nil && phone != nil && *phone == "+1-refused" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the change made while chat refused it did not arrive (%v)", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if n := strings.Count(c.out.String(), "created replication slot"); n != 1 {
		t.Fatalf("the slot was created %d times, want once", n)
	}
}
