package bench

import (
	"bytes"
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestBench_RegionsSmoke runs the cross-region phase alone at a small
// size: both placements must be measured, both consumers must end equal to
// the source (regionsPhase checks that), and across the link cdc's restart
// must take at least one round trip. It never asserts speed.
func TestBench_RegionsSmoke(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "cdc")
	build := exec.Command("go", "build", "-o", bin, "../../cmd/cdc")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build cdc: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var log bytes.Buffer
	rtt := 10 * time.Millisecond
	r, err := Run(ctx, Options{Only: OnlyRegions, RegionRows: 5_000, RegionRTT: rtt, RegionTPS: 100, RegionFor: 2 * time.Second,
		Reps: 1, BacklogClients: 2, CDC: bin, Fast: true, Log: &log})
	if err != nil {
		t.Fatalf("bench: %v\n%s", err, log.String())
	}
	x := r.Cross
	if x == nil || len(x.Placements) != 2 || len(x.RestartDirect) != 1 {
		t.Fatalf("cross-region result: %+v", x)
	}
	for _, p := range x.Placements {
		for name, d := range map[string][]time.Duration{"copy cdc": p.CopyCDC, "copy native": p.CopyNative, "backlog floor": p.BacklogFloor,
			"backlog cdc": p.BacklogCDC, "backlog native": p.BacklogNat, "restart": p.Restart} {
			if len(d) != 1 || d[0] <= 0 {
				t.Errorf("%s: %s: %v", p.Name, name, d)
			}
		}
		if p.SteadyCDC.Samples == 0 || p.SteadyNat.Samples == 0 {
			t.Errorf("%s: steady samples %d (cdc) / %d (native)", p.Name, p.SteadyCDC.Samples, p.SteadyNat.Samples)
		}
		if p.Restart[0] < x.RestartDirect[0]+rtt {
			t.Errorf("%s: restart %s across the link, %s with no proxy: the link added less than one round trip", p.Name, p.Restart[0], x.RestartDirect[0])
		}
		// Native's stream crosses the link in both placements.
		if p.SteadyNat.Latency[0] < float64(rtt.Milliseconds())/2 {
			t.Errorf("%s: native's steady p50 %.1f ms, below the link's one-way %s", p.Name, p.SteadyNat.Latency[0], rtt/2)
		}
	}
	var table bytes.Buffer
	r.Write(&table)
	for _, want := range []string{"Across regions", "cdc beside chat", "cdc beside the source", "first copy", "backlog catch-up", "latency p99", "restart to streaming"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, table.String())
		}
	}
	t.Logf("\n%s", table.String())
}
