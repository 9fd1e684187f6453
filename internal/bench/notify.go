package bench

import (
	"context"
	"fmt"
	"maps"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/myusta/cdc/migrations"
)

// RampStep is one rate of a ramp: the load asked for Target single-row
// transactions/s for a step; Achieved is what the source took, P99 the
// commit → chat latency of the step's rows, Kept whether the consumer kept
// up (P99 within keepUpP99 and every row applied).
type RampStep struct {
	Target   int
	Achieved float64
	P99      float64
	Kept     bool
}

// keepUpP99 is the p99 latency above which a consumer is said not to keep
// up with a rate: a consumer that falls behind sees its latency grow with
// the length of the step, far past this.
const keepUpP99 = 1000.0

// maxKept returns the highest rate kept up with, and whether the ramp
// stopped because the load (the source, with its clients) could not make
// the next rate rather than because the consumer fell behind.
func maxKept(steps []RampStep) (rate float64, loadLimited bool) {
	for _, s := range steps {
		if !s.Kept {
			return rate, s.Achieved < 0.95*float64(s.Target)
		}
		rate = s.Achieved
	}
	return rate, len(steps) > 0
}

// ramp raises the single-row update rate step by step while the consumer
// writing into chat keeps up, and stops at the first rate it does not keep
// up with (or the load cannot make).
func ramp(ctx context.Context, s *servers, chat *pgxpool.Pool, ids []string, o Options, name string) ([]RampStep, error) {
	var steps []RampStep
	for _, tps := range o.RampRates {
		st, err := steadyPhase(ctx, s, chat, ids, Options{SteadyTPS: tps, SteadyFor: o.RampStep, Log: o.Log}, name, nil, nil)
		if err != nil {
			return steps, err
		}
		step := RampStep{Target: tps, Achieved: float64(st.Done) / o.RampStep.Seconds(), P99: st.Latency[2]}
		step.Kept = step.Achieved >= 0.95*float64(tps) && step.P99 <= keepUpP99
		steps = append(steps, step)
		fmt.Fprintf(o.Log, "bench: ramp %s: asked %d tps, made %.0f, p99 %.1f ms, kept up: %v\n", name, tps, step.Achieved, step.P99, step.Kept)
		if !step.Kept {
			break
		}
	}
	return steps, nil
}

// notifyPhase switches cdc's chat database to notify mode (as `cdc migrate`
// with SYNC_MODE=notify would: trigger installed, slot dropped), measures
// the steady latency and the ramp, and checks chat ends equal to the
// source.
func notifyPhase(ctx context.Context, s *servers, ids []string, o Options, r *Result, env map[string]string) error {
	spec := migrations.SpecFor(s.cfg)
	if _, err := migrations.DropSlot(ctx, s.source, slot); err != nil {
		return err
	}
	var err error
	if _, err = migrations.EnsureNotifyTrigger(ctx, s.source, spec); err != nil {
		return err
	}
	defer func() { _, _ = migrations.DropNotifyTrigger(context.WithoutCancel(ctx), s.source, spec) }()
	// The trigger's own cost: the same load with the trigger and nobody
	// listening. Each notifying commit holds PostgreSQL's notification
	// queue lock through its WAL flush, so commits no longer group.
	var done int64
	if done, r.NotifySourceCommit, err = steadyLoad(ctx, s.source, ids, o.SteadyTPS, o.SteadyFor/3, 8, o.Log); err != nil {
		return err
	}
	r.NotifySourceTPS = float64(done) / (o.SteadyFor / 3).Seconds()
	fmt.Fprintf(o.Log, "bench: notify trigger alone: asked %d tps, made %.0f, commit p99 %.1f ms\n", o.SteadyTPS, r.NotifySourceTPS, r.NotifySourceCommit[2])
	env = maps.Clone(env)
	env["SYNC_MODE"] = "notify"
	proc, err := startCDC(o.CDC, env, o.Log)
	if err != nil {
		return err
	}
	defer func() { _ = proc.stop() }()
	// The first connect compares the whole table (chat is not empty).
	if _, err := proc.waitLog(ctx, "reconcile full"); err != nil {
		return err
	}
	if r.SteadyNotify, err = steadyPhase(ctx, s, s.cdc, ids, o, "cdc notify", nil, nil); err != nil {
		return err
	}
	r.RSSNotify = proc.peak()
	fmt.Fprintf(o.Log, "bench: steady %d tps, notify mode: p99 %.1f ms\n", o.SteadyTPS, r.SteadyNotify.Latency[2])
	if r.RampNotify, err = ramp(ctx, s, s.cdc, ids, o, "cdc notify"); err != nil {
		return err
	}
	r.RSSNotify = max(r.RSSNotify, proc.peak())
	if err := proc.stop(); err != nil {
		return err
	}
	return equal(ctx, s, map[string]*pgxpool.Pool{"cdc (notify mode)": s.cdc})
}
