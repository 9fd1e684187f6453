package bench

import (
	"context"
	"fmt"
	"io"
	"slices"
	"text/tabwriter"
)

// SweepPoint is one rate of the rate sweep: every window of each consumer
// at it, one per round.
type SweepPoint struct {
	Rate     int
	CDC, Nat []Steady
}

// sweepPhase measures steady latency and CPU at each of o.SweepRates,
// single-row transactions, each consumer alone (cdc, then native, at one
// rate before the next), o.SweepRounds rounds through all rates, so that a
// slow stretch of the machine lands on both. It returns with cdc stopped
// and native enabled.
func sweepPhase(ctx context.Context, s *servers, o Options, r *Result, env map[string]string, nat *native, ids []string) error {
	r.Sweep = make([]SweepPoint, len(o.SweepRates))
	so := o
	so.SteadyFor = o.SweepFor
	for round := 1; round <= o.SweepRounds; round++ {
		for i, rate := range o.SweepRates {
			so.SteadyTPS = rate
			pt := &r.Sweep[i]
			pt.Rate = rate
			if err := nat.enable(ctx, false); err != nil {
				return err
			}
			proc, err := startCDC(o.CDC, env, o.Log)
			if err != nil {
				return err
			}
			st, err := cdcWindow(ctx, s, proc, ids, so)
			r.RSSSteady = max(r.RSSSteady, proc.peak())
			if serr := proc.stop(); err == nil {
				err = serr
			}
			if err != nil {
				return fmt.Errorf("sweep %d tps: %w", rate, err)
			}
			pt.CDC = append(pt.CDC, st)
			if err := nat.enable(ctx, true); err != nil {
				return err
			}
			nt, err := steadyPhase(ctx, s, s.native, ids, so, "native", nil,
				func(ctx context.Context) ([]procGroup, error) { return nativeProcesses(ctx, s) })
			if err != nil {
				return fmt.Errorf("sweep %d tps: %w", rate, err)
			}
			pt.Nat = append(pt.Nat, nt)
			fmt.Fprintf(o.Log, "bench: sweep %d tps, round %d/%d: p50/p99 cdc %.1f/%.1f ms, native %.1f/%.1f ms; CPU per 1000 changes cdc %.0f ms, native %.0f ms\n",
				rate, round, o.SweepRounds, st.Latency[0], st.Latency[2], nt.Latency[0], nt.Latency[2], st.cpuPer1000(so), nt.cpuPer1000(so))
		}
	}
	return nil
}

// consumerGroups are the process groups that count as a consumer's own
// work: cdc and its chat backends, or the apply worker (the walsender is
// the source's, the same for both).
var consumerGroups = map[string]bool{"cdc": true, "chat backends": true, "apply worker": true}

// cpuPer1000 is the consumer's CPU time, in ms, per 1,000 changes the
// load made during the window.
func (st Steady) cpuPer1000(o Options) float64 {
	var ms float64
	for name := range consumerGroups {
		ms += st.groupPer1000(o, name)
	}
	return ms
}

// groupPer1000 is one process group's CPU time, in ms, per 1,000 changes
// the load made during the window.
func (st Steady) groupPer1000(o Options, name string) float64 {
	tps := float64(st.Done) / o.SweepFor.Seconds()
	if tps == 0 {
		return 0
	}
	var pct float64
	for _, p := range st.CPU.Procs {
		if p.Name == name {
			pct += p.Percent
		}
	}
	return pct / 100 / tps * 1e6
}

// writeSweep prints the sweep: per rate, the window with the median p99 of
// each consumer, the ratios, and the CPU per 1,000 changes (medians).
func (r *Result) writeSweep(w io.Writer) {
	if len(r.Sweep) == 0 {
		return
	}
	fmt.Fprintf(w, "\nrate sweep: single-row transactions, %s windows, each consumer alone, %d interleaved rounds; source commit -> visible in chat, p50 / p95 / p99 (window with the median p99); CPU: cdc + its chat backends vs native's apply worker\n\n", r.SweepFor, r.SweepRounds)
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', tabwriter.Debug)
	fmt.Fprintln(tw, "| rate\t cdc\t native\t p50 cdc/native\t p99 cdc/native\t CPU per 1,000 changes, cdc (process + chat backends) / native\t target: p50, p99, CPU ≤ native\t")
	fmt.Fprintln(tw, "|---\t---\t---\t---\t---\t---\t---\t")
	o := r.Options
	total := func(st Steady) float64 { return st.cpuPer1000(o) }
	group := func(name string) func(Steady) float64 {
		return func(st Steady) float64 { return st.groupPer1000(o, name) }
	}
	for _, pt := range r.Sweep {
		c := pt.CDC[medianByP99(latencies(pt.CDC))]
		n := pt.Nat[medianByP99(latencies(pt.Nat))]
		cc, nc := medianOf(pt.CDC, total), medianOf(pt.Nat, total)
		ok := c.Latency[0] <= n.Latency[0] && c.Latency[2] <= n.Latency[2] && cc <= nc
		proc, chat := medianOf(pt.CDC, group("cdc")), medianOf(pt.CDC, group("chat backends"))
		fmt.Fprintf(tw, "| %d tps\t %.1f / %.1f / %.1f ms\t %.1f / %.1f / %.1f ms\t %.2f\t %.2f\t %.0f (%.0f + %.0f) / %.0f ms (%.2f)\t %s\t\n",
			pt.Rate, c.Latency[0], c.Latency[1], c.Latency[2], n.Latency[0], n.Latency[1], n.Latency[2],
			c.Latency[0]/n.Latency[0], c.Latency[2]/n.Latency[2], cc, proc, chat, nc, cc/nc, verdict(ok))
	}
	tw.Flush()
}

// medianOf is the median of f over windows.
func medianOf(ws []Steady, f func(Steady) float64) float64 {
	v := make([]float64, len(ws))
	for i, st := range ws {
		v[i] = f(st)
	}
	return medianFloat(v)
}

// medianFloat is the median of v (the higher middle one for an even count).
func medianFloat(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}
