package bench

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Steady is one consumer's steady-state window.
type Steady struct {
	Done    int64      // transactions made by the load
	Latency [3]float64 // source updated_at -> chat write, p50/p95/p99 ms
	Samples int        // rows measured
	Commit  [3]float64 // the load's own statement+commit time on the source, p50/p95/p99 ms
	CPU     CPUUse     // the consumer's processes during the window (when watched)
	Inside  Inside     // where cdc's own time went (cdc's windows only)
}

// Inside is where cdc's own time goes in a steady window, from its debug
// log: batch apply, batch age (first change in -> committed), receive delay
// (source commit -> change read by cdc) and its part before the source's
// walsender sent the commit, p50/p95/p99 ms; and the scheduled reconcile
// runs cdc logged during the window.
type Inside struct {
	Apply, Age, Receive, Send [3]float64
	Reconcile                 string
}

// steadyRounds measures steady latency o.Reps times, round by round: the
// discarding consumer (the floor), cdc, then native, each alone, so that a
// slow stretch of the machine lands on all three and one 30-s window's top
// 1 % does not decide the result. The ramp runs after cdc's last window.
// The result holds every window and, for each consumer, the window with
// the median p99. It returns with cdc stopped and native enabled.
func steadyRounds(ctx context.Context, s *servers, o Options, r *Result, env map[string]string, nat *native, floor *ceiling, ids []string) error {
	// Autovacuum off from here through the sweep (bench.go turns it back
	// on): steadyPhase and steadyFloor vacuum before every latency window
	// instead, so that no consumer's window holds a vacuum of the others'
	// dead rows. With it on, the source's autovacuum of the wide table
	// (~15 s, once a minute under this load) fell in one window in three,
	// and cdc's p99 there was 277-334 ms (BENCHMARKS.md, session 13).
	if err := autovacuum(ctx, s, false); err != nil {
		return err
	}
	for _, p := range []*pgxpool.Pool{s.source, s.cdc, s.native} {
		if _, err := p.Exec(ctx, "ANALYZE users"); err != nil {
			return fmt.Errorf("analyze: %w", err)
		}
	}
	for _, p := range []*pgxpool.Pool{s.cdc, s.native} {
		if _, err := p.Exec(ctx, latencyTrigger); err != nil {
			return fmt.Errorf("install latency trigger: %w", err)
		}
	}
	for round := 1; round <= o.Reps; round++ {
		if err := nat.enable(ctx, false); err != nil {
			return err
		}
		fl, err := steadyFloor(ctx, s, floor, ids, o)
		if err != nil {
			return err
		}
		r.SteadyFloorRuns = append(r.SteadyFloorRuns, fl)

		proc, err := startCDC(o.CDC, env, o.Log)
		if err != nil {
			return err
		}
		st, err := cdcWindow(ctx, s, proc, ids, o)
		if err == nil && round == o.Reps && !o.Core {
			r.RampCDC, err = ramp(ctx, s, s.cdc, ids, o, "cdc replication")
		}
		r.RSSSteady = max(r.RSSSteady, proc.peak())
		if serr := proc.stop(); err == nil {
			err = serr
		}
		if err != nil {
			return err
		}
		r.SteadyCDCRuns = append(r.SteadyCDCRuns, st)

		if err := nat.enable(ctx, true); err != nil {
			return err
		}
		st, err = steadyPhase(ctx, s, s.native, ids, o, "native", nil,
			func(ctx context.Context) ([]procGroup, error) { return nativeProcesses(ctx, s) })
		if err != nil {
			return err
		}
		r.SteadyNatRuns = append(r.SteadyNatRuns, st)
		fmt.Fprintf(o.Log, "bench: steady %d tps, round %d/%d: p99 walsender alone %.1f ms, cdc %.1f ms, native %.1f ms\n",
			o.SteadyTPS, round, o.Reps, fl[2], r.SteadyCDCRuns[round-1].Latency[2], st.Latency[2])
	}
	r.SteadyFloor = r.SteadyFloorRuns[medianByP99(r.SteadyFloorRuns)]
	r.SteadyCDC = r.SteadyCDCRuns[medianByP99(latencies(r.SteadyCDCRuns))]
	r.SteadyNat = r.SteadyNatRuns[medianByP99(latencies(r.SteadyNatRuns))]
	return nil
}

// cdcWindow measures one steady window of a running cdc process, with
// where its time went.
func cdcWindow(ctx context.Context, s *servers, proc *cdcProc, ids []string, o Options) (Steady, error) {
	if _, err := proc.waitLog(ctx, "streaming changes"); err != nil {
		return Steady{}, err
	}
	first := 0
	st, err := steadyPhase(ctx, s, s.cdc, ids, o, "cdc", func() { first = proc.lineCount() },
		func(ctx context.Context) ([]procGroup, error) { return cdcProcesses(ctx, s, proc) })
	if err != nil {
		return st, err
	}
	in := &st.Inside
	in.Apply, in.Age, in.Receive, in.Send = proc.batchTimings(first)
	in.Reconcile = proc.reconcileRuns(first)
	return st, nil
}

// medianByP99 returns the index of the window whose p99 is the median
// (the higher of the two middle ones for an even count); -1 for none.
func medianByP99(ps [][3]float64) int {
	idx := make([]int, len(ps))
	for i := range idx {
		idx[i] = i
	}
	slices.SortStableFunc(idx, func(a, b int) int { return cmp.Compare(ps[a][2], ps[b][2]) })
	if len(idx) == 0 {
		return -1
	}
	return idx[len(idx)/2]
}

// latencies lists the windows' latency percentiles.
func latencies(ws []Steady) [][3]float64 {
	out := make([][3]float64, len(ws))
	for i, w := range ws {
		out[i] = w.Latency
	}
	return out
}

// steadyPhase makes the steady load and measures one consumer's latency;
// begin (if not nil) is called when the measured window starts, and watch
// (if not nil) names the consumer's processes, whose CPU is measured over
// the window. A consumer gets catchUpWithin to apply what the load wrote.
func steadyPhase(ctx context.Context, s *servers, chat *pgxpool.Pool, ids []string, o Options, name string, begin func(), watch func(context.Context) ([]procGroup, error)) (Steady, error) {
	var st Steady
	if err := vacuum(ctx, s); err != nil {
		return st, err
	}
	// The consumer first catches up on what was written while it was
	// stopped, so the window measures steady state, not a backlog.
	caughtUp := func() error {
		marker := fmt.Sprintf("00000000-0000-0000-0000-%012x", time.Now().UnixNano()&0xffffffffffff)
		if err := insertMarker(ctx, s.source, marker); err != nil {
			return err
		}
		wctx, cancel := context.WithTimeout(ctx, catchUpWithin)
		defer cancel()
		if err := waitMarker(wctx, chat, marker); err != nil {
			return fmt.Errorf("%s: wait for the marker: %w", name, err)
		}
		return nil
	}
	if err := caughtUp(); err != nil {
		return st, err
	}
	if begin != nil {
		begin()
	}
	var cpu *cpuWatch
	if watch != nil {
		groups, err := watch(ctx)
		if err != nil {
			return st, fmt.Errorf("%s: %w", name, err)
		}
		cpu = startCPU(groups)
	}
	since := time.Now()
	var err error
	if st.Done, st.Commit, err = steadyLoad(ctx, s.source, ids, o.SteadyTPS, o.SteadyFor, 8, o.Log); err != nil {
		return st, err
	}
	if cpu != nil {
		st.CPU = cpu.stop()
	}
	if err := caughtUp(); err != nil {
		return st, err
	}
	st.Latency, st.Samples, err = percentiles(ctx, chat, since)
	return st, err
}

// steadyFloor makes the steady load with only the discarding consumer
// reading, and returns the percentiles of commit -> arrival.
func steadyFloor(ctx context.Context, s *servers, floor *ceiling, ids []string, o Options) ([3]float64, error) {
	if err := vacuum(ctx, s); err != nil {
		return [3]float64{}, err
	}
	if err := floor.create(ctx); err != nil {
		return [3]float64{}, err
	}
	lctx, stop := context.WithCancel(ctx)
	type result struct {
		ms  []float64
		err error
	}
	res := make(chan result, 1)
	go func() {
		ms, err := floor.latency(lctx)
		res <- result{ms, err}
	}()
	_, _, err := steadyLoad(ctx, s.source, ids, o.SteadyTPS, o.SteadyFor, 8, o.Log)
	time.Sleep(time.Second) // let the last transactions arrive
	stop()
	out := <-res
	if err != nil {
		return [3]float64{}, err
	}
	if out.err != nil {
		return [3]float64{}, out.err
	}
	return quantiles(out.ms), nil
}

// vacuum clears the dead rows the last window left on every server, so
// that each window starts alike.
func vacuum(ctx context.Context, s *servers) error {
	for _, p := range []*pgxpool.Pool{s.source, s.cdc, s.native, s.pipe} {
		if _, err := p.Exec(ctx, "VACUUM users"); err != nil {
			return fmt.Errorf("vacuum: %w", err)
		}
	}
	return nil
}
