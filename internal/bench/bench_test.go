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

// TestBench_Smoke runs every phase at a small size: the phases must
// complete and both consumers must end equal to the source row by row
// (Run checks that). It never asserts speed.
func TestBench_Smoke(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "cdc")
	build := exec.Command("go", "build", "-o", bin, "../../cmd/cdc")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build cdc: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var log bytes.Buffer
	r, err := Run(ctx, Options{Rows: 20_000, Reps: 1, SteadyTPS: 200, SteadyFor: 3 * time.Second, BacklogClients: 4, CDC: bin, Fast: true, Log: &log,
		RampRates: []int{200, 400}, RampStep: 2 * time.Second, BigTxRows: 20_000, DecodingWorkMem: "64kB",
		SweepRates: []int{100}, SweepFor: 3 * time.Second, SweepRounds: 1})
	if err != nil {
		t.Fatalf("bench: %v\n%s", err, log.String())
	}
	for name, d := range map[string][]time.Duration{"verify": r.VerifyFull, "window": r.Window, "copy pipe": r.CopyPipe, "copy cdc": r.CopyCDC, "copy native": r.CopyNative,
		"backlog floor": r.BacklogCeiling, "backlog cdc": r.BacklogCDC, "backlog native": r.BacklogNat,
		"conflict plain": r.ConflictFree, "conflict swap": r.ConflictSwap} {
		if len(d) != 1 || d[0] <= 0 {
			t.Errorf("%s: %v", name, d)
		}
	}
	if r.SteadyCDC.Samples == 0 || r.SteadyNat.Samples == 0 || r.RSSCopy == 0 || r.RSSSteady == 0 || r.SteadyCDC.Inside.Apply[2] == 0 && r.SteadyCDC.Inside.Age[2] == 0 {
		t.Errorf("steady samples %d/%d, RSS %d/%d, cdc timings %v %v", r.SteadyCDC.Samples, r.SteadyNat.Samples, r.RSSCopy, r.RSSSteady, r.SteadyCDC.Inside.Apply, r.SteadyCDC.Inside.Age)
	}
	if c, n := r.SteadyCDC.CPU, r.SteadyNat.CPU; len(c.Procs) != 3 || len(n.Procs) != 2 || c.Procs[0].Percent <= 0 || n.Procs[0].Percent <= 0 || c.Machine <= 0 {
		t.Errorf("steady CPU not measured: cdc %+v, native %+v", c, n)
	}
	if r.VerifyHeap[0] <= 0 || r.VerifyHeap[1] <= 0 {
		t.Errorf("table sizes at verify not measured: %v", r.VerifyHeap)
	}
	if r.SteadyNotify.Samples == 0 || len(r.RampCDC) == 0 || len(r.RampNotify) == 0 {
		t.Errorf("notify steady samples %d, ramp steps %d (replication) / %d (notify)", r.SteadyNotify.Samples, len(r.RampCDC), len(r.RampNotify))
	}
	if len(r.BigTxCDC) != 2 || len(r.BigTxNat) != 1 || len(r.BigTxNatStream) != 1 {
		t.Errorf("big transaction runs: cdc %d, native %d, native streaming %d", len(r.BigTxCDC), len(r.BigTxNat), len(r.BigTxNatStream))
	}
	for i, c := range r.BigTxCDC {
		if c.Took <= 0 || c.SpillBytes != 0 || c.StreamBytes == 0 || c.Apply <= 0 || c.Walsender <= 0 {
			t.Errorf("cdc's big transaction run %d: %+v, want it streamed and not spilled", i, c)
		}
	}
	if n := r.BigTxNat[0]; n.SpillBytes == 0 || n.StreamBytes != 0 || n.Apply <= 0 {
		t.Errorf("native's default big transaction run: %+v, want it spilled, not streamed", n)
	}
	if n := r.BigTxNatStream[0]; n.StreamBytes == 0 {
		t.Errorf("native's streaming big transaction run: %+v, want it streamed", n)
	}
	if len(r.Sweep) != 1 || len(r.Sweep[0].CDC) != 1 || len(r.Sweep[0].Nat) != 1 || len(r.Sweep[0].Floor) != 1 {
		t.Errorf("sweep: %+v, want one window of cdc, native and the floor", r.Sweep)
	} else if f := r.Sweep[0].Floor[0]; f.Relay <= 0 || f.Chat <= 0 {
		t.Errorf("CPU floor not measured: %+v", f)
	}
	if len(r.Sweep) != 1 || len(r.Sweep[0].Apply) != 1 {
		t.Errorf("sweep: %+v, want one window of the latency floor", r.Sweep)
	} else if a := r.Sweep[0].Apply[0]; a.Samples < 200 || a.Latency[0] <= 0 || a.CPU.Secs <= 0 {
		t.Errorf("latency floor: %d samples, latency %v, CPU %+v; want 3 s of 100 changes/s applied and measured", a.Samples, a.Latency, a.CPU)
	}
	var table bytes.Buffer
	r.Write(&table)
	for _, want := range []string{"CPU floor (relay + chat backend)", "latency floor", "initial copy", "backlog catch-up", "walsender alone", "steady", "notify mode", "kept up with", "peak RSS", "CPU during the window", "email swap", "native, streaming = on"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, table.String())
		}
	}
	t.Logf("\n%s", table.String())
}

// TestBench_WideShapeSmoke runs the core phases on the wide table: cdc
// must choose text (the table has an array) and both consumers end equal.
func TestBench_WideShapeSmoke(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "cdc")
	build := exec.Command("go", "build", "-o", bin, "../../cmd/cdc")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build cdc: %v\n%s", err, out)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var log bytes.Buffer
	r, err := Run(ctx, Options{Rows: 5_000, Reps: 1, SteadyTPS: 100, SteadyFor: 2 * time.Second, BacklogClients: 2, CDC: bin, Fast: true, Log: &log,
		Shape: ShapeWide, Core: true})
	if err != nil {
		t.Fatalf("bench: %v\n%s", err, log.String())
	}
	if r.Format != "text" || len(r.CopyCDC) != 1 || len(r.BacklogCDC) != 1 || r.SteadyCDC.Samples == 0 || r.SteadyNat.Samples == 0 {
		t.Errorf("format %q, copy %v, backlog %v, steady samples %d/%d", r.Format, r.CopyCDC, r.BacklogCDC, r.SteadyCDC.Samples, r.SteadyNat.Samples)
	}
	var table bytes.Buffer
	r.Write(&table)
	if !strings.Contains(table.String(), "wide table (20 columns") || !strings.Contains(table.String(), "wire format text") {
		t.Errorf("table does not name the shape and format:\n%s", table.String())
	}
	t.Logf("\n%s", table.String())
}

func TestMedianByP99(t *testing.T) {
	for _, c := range []struct {
		p99s []float64
		want int
	}{{nil, -1}, {[]float64{7}, 0}, {[]float64{56, 38, 42}, 2}, {[]float64{10, 40, 30, 20}, 2}} {
		ps := make([][3]float64, len(c.p99s))
		for i, p := range c.p99s {
			ps[i][2] = p
		}
		if got := medianByP99(ps); got != c.want {
			t.Errorf("medianByP99(%v) = %d, want %d", c.p99s, got, c.want)
		}
	}
}

// TestVerdicts: the CPU target is out of reach only when cdc spends at
// least the floor (it applies changes one by one) and the floor is above
// native; a latency floor above native never makes a target out of reach.
func TestVerdicts(t *testing.T) {
	for _, c := range []struct {
		got, want string
	}{
		{cpuVerdict(100, 120, 200), "met"},
		{cpuVerdict(700, 280, 650), "out of reach (floor > native)"},
		{cpuVerdict(140, 126, 212), "MISSED"}, // batching: below the floor
		{cpuVerdict(300, 280, 250), "MISSED"},
		{latencyVerdict(0.5, 0.6, 2.0), "met"},
		{latencyVerdict(1.1, 0.8, 1.1), "MISSED (floor too)"},
		{latencyVerdict(8.3, 0.6, 0.5), "MISSED"},
	} {
		if c.got != c.want {
			t.Errorf("got %q, want %q", c.got, c.want)
		}
	}
}
