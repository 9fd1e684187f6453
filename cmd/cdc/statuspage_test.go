//go:build chromium

package main

import (
	"context"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/myusta/cdc/internal/health"
	"github.com/myusta/cdc/internal/pgtest"
)

// chromium finds a headless-capable Chromium, or "".
func chromium() string {
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	return ""
}

// dumpDOM loads url in headless Chromium, lets its scripts run for 5 s of
// virtual time, and returns the resulting DOM.
func dumpDOM(t *testing.T, bin, url string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
		"--user-data-dir="+t.TempDir(), "--virtual-time-budget=5000", "--dump-dom", url)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium --dump-dom %s: %v", url, err)
	}
	return string(out)
}

var (
	pageState  = regexp.MustCompile(`<body[^>]*data-state="(\w+)"`)
	pageStatus = regexp.MustCompile(`id="status"[^>]*>(HEALTHY|DEGRADED|UNHEALTHY)<`)
	pageTotal  = regexp.MustCompile(`id="total"[^>]*data-value="(\d+)"`)
	pageSpark  = regexp.MustCompile(`id="spark-line"[^>]*points="([^"]*)"`)
	pageMode   = regexp.MustCompile(`id="mode">(\w+)<`)
)

// TestStatusPage_Chromium loads the status page in headless Chromium while
// cdc streams a steady load, and checks that its script ran under the
// page's CSP and shows live numbers: the state, the health, the rows
// synced (at least what /stats said before, and growing between two
// loads) and a throughput sparkline.
func TestStatusPage_Chromium(t *testing.T) {
	bin := chromium()
	if bin == "" {
		t.Skip("Chromium not found: install it (Debian: apt-get install -y chromium) to test the status page")
	}
	p := pgtest.NewPair(t, 2000)
	c := startCDC(t, with(p.Env(), "LOG_LEVEL", "info"), "run")
	base := "http://" + httpAddr(t, c)
	p.WaitEqual(t, 30*time.Second)
	load(t, p, 100, 0)
	before := waitHealth(t, base, 60*time.Second, "two throughput intervals with changes", func(st *health.Stats, _ int) bool {
		return len(st.Throughput) >= 2 && st.TotalSynced > 0
	})

	var totals []int64
	for i := 0; i < 2; i++ {
		dom := dumpDOM(t, bin, base+"/")
		state, status, total, spark, mode := pageState.FindStringSubmatch(dom), pageStatus.FindStringSubmatch(dom),
			pageTotal.FindStringSubmatch(dom), pageSpark.FindStringSubmatch(dom), pageMode.FindStringSubmatch(dom)
		if state == nil || state[1] != "live" || status == nil || total == nil || spark == nil || mode == nil || mode[1] != "replication" {
			t.Fatalf("the page did not render /stats (state %v, status %v, total %v, sparkline %v, mode %v):\n%s", state, status, total, spark, mode, dom)
		}
		if n := len(strings.Fields(spark[1])); n < 2 {
			t.Errorf("sparkline has %d points, want at least 2", n)
		}
		if !strings.Contains(dom, "<td>stream</td>") {
			t.Errorf("the checks table lacks the stream check")
		}
		n, _ := strconv.ParseInt(total[1], 10, 64)
		totals = append(totals, n)
	}
	if totals[0] < before.TotalSynced || totals[1] <= totals[0] {
		t.Errorf("rows synced on the page: %v; want at least %d (from /stats before) and growing under load", totals, before.TotalSynced)
	}
	if code := c.stop(t, 40*time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
}
