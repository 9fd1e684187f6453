package main

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/myusta/cdc/internal/health"
	"github.com/myusta/cdc/internal/pgtest"
)

// TestStandby_TakesOverAfterKillNine runs two cdc run on the same databases
// under load: exactly one is active, the other stands by (healthy, not
// ready, role standby, alive for the container check). When the active one
// is killed with -9, the standby takes over within seconds and chat ends
// equal to the source, nothing applied twice.
func TestStandby_TakesOverAfterKillNine(t *testing.T) {
	p := pgtest.NewPair(t, 3000)
	p.TrackApplies(t)
	env := with(p.Env(), "LOG_LEVEL", "info")
	a := startCDC(t, env, "run")
	a.waitOutput(t, "streaming changes", 30*time.Second)
	b := startCDC(t, env, "run")
	b.waitOutput(t, "standing by: another cdc is active on this slot", 30*time.Second)
	base := "http://" + httpAddr(t, b)

	stopLoad := load(t, p, 200, 50)
	st := waitHealth(t, base, 10*time.Second, "standby reported", func(st *health.Stats, ready int) bool {
		return st.Role == "standby" && ready == http.StatusServiceUnavailable && st.HealthStatus.Status == health.Healthy
	})
	if !strings.Contains(st.ActiveInstance, "cdc") {
		t.Errorf("standby does not name the active instance: %q", st.ActiveInstance)
	}
	if code, out := runCDC(t, with(env, "HTTP_ADDR", strings.TrimPrefix(base, "http://")), "status", "--live"); code != 0 {
		t.Fatalf("cdc status --live on the standby: exit %d\n%s", code, out)
	}
	if strings.Contains(b.out.String(), "streaming changes") {
		t.Fatal("the standby streams while the active one runs")
	}

	time.Sleep(2 * time.Second)
	a.kill()
	killed := time.Now()
	b.waitOutput(t, "the active cdc is gone: taking over", 15*time.Second)
	b.waitOutput(t, "streaming changes", 30*time.Second)
	tookOver := time.Since(killed)
	waitHealth(t, base, 30*time.Second, "the new active instance ready", func(st *health.Stats, ready int) bool {
		return st.Role == "active" && ready == http.StatusOK
	})
	time.Sleep(2 * time.Second)
	stopLoad()
	p.WaitEqual(t, 60*time.Second)
	if total, twice := p.Applies(t); twice != 0 {
		t.Fatalf("%d of %d row versions applied twice across the takeover", twice, total)
	}
	if code := b.stop(t, 40*time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
	t.Logf("standby streaming %s after kill -9 of the active instance", tookOver.Round(10*time.Millisecond))
	if tookOver > 20*time.Second {
		t.Errorf("takeover took %s", tookOver)
	}
}
