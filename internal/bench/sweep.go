package bench

import (
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"text/tabwriter"
)

// SweepPoint is one rate of the rate sweep: every window of each consumer
// at it, one per round.
type SweepPoint struct {
	Rate     int
	CDC, Nat []Steady
	Floor    []Floor  // the CPU floor (cpufloor.go), one window per round
	Apply    []Steady // the latency floor (applyfloor.go), one window per round
}

// sweepPhase measures steady latency and CPU at each of o.SweepRates,
// single-row transactions, each consumer alone (cdc, then native, at one
// rate before the next, then the CPU floor), o.SweepRounds rounds through
// all rates, so that a slow stretch of the machine lands on all of them.
// It returns with cdc stopped and native enabled.
func sweepPhase(ctx context.Context, s *servers, o Options, r *Result, env map[string]string, nat *native, ids []string) error {
	// The floor's chat backend pays for the latency trigger as the
	// consumers' do.
	if _, err := s.pipe.Exec(ctx, latencyTrigger); err != nil {
		return fmt.Errorf("install latency trigger: %w", err)
	}
	r.Sweep = make([]SweepPoint, len(o.SweepRates))
	// cdc logs as users run it: the per-batch debug lines the steady phase
	// reads cost cdc ~11 % more CPU per change at 100 changes/s
	// (BENCHMARKS.md, session 11).
	env = maps.Clone(env)
	env["LOG_LEVEL"] = "info"
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
			fl, err := cpuFloor(ctx, s, ids, rate, o.SweepFor)
			if err != nil {
				return fmt.Errorf("sweep %d tps: %w", rate, err)
			}
			pt.Floor = append(pt.Floor, fl)
			ap, err := applyFloor(ctx, s, ids, so)
			if err != nil {
				return fmt.Errorf("sweep %d tps: %w", rate, err)
			}
			pt.Apply = append(pt.Apply, ap)
			fmt.Fprintf(o.Log, "bench: sweep %d tps, round %d/%d: p50/p99 cdc %.1f/%.1f ms, native %.1f/%.1f ms, latency floor %.1f/%.1f ms; CPU per 1000 changes cdc %.0f ms, native %.0f ms, floor %.0f ms (relay %.0f + chat %.0f; round trip %.2f ms)\n",
				rate, round, o.SweepRounds, st.Latency[0], st.Latency[2], nt.Latency[0], nt.Latency[2], ap.Latency[0], ap.Latency[2],
				st.cpuPer1000(so), nt.cpuPer1000(so), fl.Total(), fl.Relay, fl.Chat, fl.RoundTrip)
		}
	}
	return nil
}

// consumerGroups are the process groups that count as a consumer's own
// work: cdc and its chat backends, the apply worker, or the latency
// floor's consumer and its chat backend (the walsender is the source's,
// the same for all).
var consumerGroups = map[string]bool{"cdc": true, "chat backends": true, "apply worker": true, "floor consumer": true}

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
// each consumer, the ratios, the CPU per 1,000 changes and the CPU floor
// (medians), and each target's verdict.
func (r *Result) writeSweep(w io.Writer) {
	if len(r.Sweep) == 0 {
		return
	}
	fmt.Fprintf(w, "\nrate sweep: single-row transactions, %s windows, each consumer alone, %d interleaved rounds; source commit -> visible in chat, p50 / p95 / p99 (window with the median p99); CPU: cdc + its chat backends vs native's apply worker; CPU floor: a Go relay + a chat backend applying each change with one prepared UPDATE, the least a consumer of cdc's shape can spend, and that UPDATE's median round trip, the hop native does not make (cpufloor.go); latency floor: the simplest real consumer, applying each change on arrival with one prepared statement, no batching (applyfloor.go); CPU out of reach: cdc applies changes one by one (CPU ≥ floor) and the floor is above native\n\n", r.SweepFor, r.SweepRounds)
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', tabwriter.Debug)
	fmt.Fprintln(tw, "| rate\t cdc\t native\t latency floor\t p50 cdc/native\t p99 cdc/native\t CPU per 1,000 changes, cdc (process + chat backends) / native\t CPU floor (relay + chat backend)\t targets: p50, p99, CPU ≤ native\t")
	fmt.Fprintln(tw, "|---\t---\t---\t---\t---\t---\t---\t---\t---\t")
	o := r.Options
	total := func(st Steady) float64 { return st.cpuPer1000(o) }
	group := func(name string) func(Steady) float64 {
		return func(st Steady) float64 { return st.groupPer1000(o, name) }
	}
	for _, pt := range r.Sweep {
		c := pt.CDC[medianByP99(latencies(pt.CDC))]
		n := pt.Nat[medianByP99(latencies(pt.Nat))]
		a := pt.Apply[medianByP99(latencies(pt.Apply))]
		cc, nc := medianOf(pt.CDC, total), medianOf(pt.Nat, total)
		proc, chat := medianOf(pt.CDC, group("cdc")), medianOf(pt.CDC, group("chat backends"))
		relay := medianFloat(floors(pt.Floor, func(f Floor) float64 { return f.Relay }))
		fchat := medianFloat(floors(pt.Floor, func(f Floor) float64 { return f.Chat }))
		trip := medianFloat(floors(pt.Floor, func(f Floor) float64 { return f.RoundTrip }))
		fmt.Fprintf(tw, "| %d tps\t %.1f / %.1f / %.1f ms\t %.1f / %.1f / %.1f ms\t %.1f / %.1f / %.1f ms, CPU %.0f ms\t %.2f\t %.2f\t %.0f (%.0f + %.0f) / %.0f ms (%.2f)\t %.0f (%.0f + %.0f) ms (%.2f × native); round trip %.2f ms\t %s, %s, %s\t\n",
			pt.Rate, c.Latency[0], c.Latency[1], c.Latency[2], n.Latency[0], n.Latency[1], n.Latency[2],
			a.Latency[0], a.Latency[1], a.Latency[2], medianOf(pt.Apply, total),
			c.Latency[0]/n.Latency[0], c.Latency[2]/n.Latency[2], cc, proc, chat, nc, cc/nc,
			relay+fchat, relay, fchat, (relay+fchat)/nc, trip,
			latencyVerdict(c.Latency[0], n.Latency[0], a.Latency[0]), latencyVerdict(c.Latency[2], n.Latency[2], a.Latency[2]), cpuVerdict(cc, nc, relay+fchat))
	}
	tw.Flush()
}

// cpuVerdict judges cdc's CPU per change against native's. The CPU floor
// bounds a consumer that applies each change alone: when cdc spends at
// least the floor (it is applying changes one by one) and the floor is
// above native, the target is out of reach; below the floor cdc batches,
// and the floor proves nothing.
func cpuVerdict(cdc, native, floor float64) string {
	switch {
	case cdc <= native:
		return verdict(true)
	case floor > native && cdc >= floor:
		return "out of reach (floor > native)"
	default:
		return verdict(false)
	}
}

// latencyVerdict judges cdc's latency against native's, and says when the
// latency floor, the simplest consumer, is above native's too: a missed
// target no simple consumer meets, though not a bound (a consumer can be
// faster than the simplest).
func latencyVerdict(cdc, native, floor float64) string {
	switch {
	case cdc <= native:
		return verdict(true)
	case floor > native:
		return verdict(false) + " (floor too)"
	default:
		return verdict(false)
	}
}

// floors lists f of each floor window.
func floors(fs []Floor, f func(Floor) float64) []float64 {
	out := make([]float64, len(fs))
	for i := range fs {
		out[i] = f(fs[i])
	}
	return out
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
