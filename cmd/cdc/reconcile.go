package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"time"

	"github.com/myusta/cdc/change"
	"github.com/myusta/cdc/internal/config"
	"github.com/myusta/cdc/reconcile"
	"github.com/myusta/cdc/replication"
	"github.com/myusta/cdc/sink"
)

// oneShot is what cdc reconcile and cdc verify open: both pools and both
// table descriptions, checked like cdc run checks them.
type oneShot struct {
	src, chat reconcile.Side
	close     func()
}

func openOneShot(ctx context.Context, cfg *config.Config, log *slog.Logger) (*oneShot, error) {
	if err := cfg.RequireDatabases(); err != nil {
		return nil, err
	}
	p := oneShotPolicy(cfg)
	srcPool, err := openPool(ctx, log, "SOURCE_DATABASE_URL", cfg.SourceURL, 4, p)
	if err != nil {
		return nil, err
	}
	chatPool, err := openPool(ctx, log, "CHAT_DATABASE_URL", cfg.ChatURL, 4, p)
	if err != nil {
		srcPool.Close()
		return nil, err
	}
	o := &oneShot{close: func() { srcPool.Close(); chatPool.Close() }}
	srcTable, err := replication.LoadTable(ctx, srcPool, sourceSpec(cfg).Spec, "source", "check SOURCE_TABLE and the database in the DSN")
	if err != nil {
		o.close()
		return nil, err
	}
	chatTable, err := chatPreflight(ctx, srcPool, chatPool, cfg, srcTable)
	if err != nil {
		o.close()
		return nil, err
	}
	o.src = reconcile.Side{Pool: srcPool, Table: srcTable}
	o.chat = reconcile.Side{Pool: chatPool, Table: chatTable}
	return o, nil
}

// schedulePace makes cdc run's scheduled window runs rest twice as long as
// each slice's reads took: at 2,000 changes/s on 200k rows, a run over
// ~100k rows per side lifted the stream's p99 to 135 / 54 / 146 ms unpaced
// and 59 / 75 / 61 ms paced (interleaved rounds, see BENCHMARKS.md).
const schedulePace = 2

// newReconciler builds the reconciler cdc run, cdc reconcile and cdc verify
// share; sync may be nil.
func newReconciler(cfg *config.Config, log *slog.Logger, src, chat reconcile.Side, repairer change.Sink, sync func(context.Context) error) *reconcile.Reconciler {
	return reconcile.New(src, chat, repairer, reconcile.Options{
		Interval:     cfg.SyncInterval,
		Multiplier:   cfg.WindowMultiplier,
		FullInterval: cfg.FullReconcileInterval,
		Sync:         sync,
		Pace:         schedulePace,
		Logger:       log,
	})
}

// newSink returns the chat writer; onBatch (may be nil) sees each batch.
func newSink(cfg *config.Config, log *slog.Logger, chat reconcile.Side, onBatch func(change.BatchInfo)) *sink.Sink {
	return sink.New(chat.Pool, chat.Table, sink.Options{Slot: cfg.SlotName, Retry: writePolicy(cfg), Logger: log, OnBatch: onBatch,
		AsyncCommit: cfg.AsyncCommit && cfg.Mode == config.ModeReplication})
}

// cmdReconcile is the one-shot backfill and repair. It is safe beside a
// running cdc run: both take the same writer lock in chat.
func cmdReconcile(ctx context.Context, e *env, args []string) error {
	fs := flag.NewFlagSet("reconcile", flag.ContinueOnError)
	since := fs.Duration("since", 0, "compare rows updated in this window before now (e.g. 2h)")
	fromS := fs.String("from", "", "compare rows updated at or after this time (RFC 3339)")
	toS := fs.String("to", "", "… and at or before this time (RFC 3339; default: no upper bound)")
	full := fs.Bool("full", false, "compare the whole table by key-range checksums")
	dryRun := fs.Bool("dry-run", false, "report what would be repaired; write nothing")
	cfg, log, err := e.setup(fs, args)
	if err != nil {
		return err
	}
	var from, to time.Time
	if *fromS != "" {
		if from, err = time.Parse(time.RFC3339, *fromS); err != nil {
			return usageError("--from: %v (use RFC 3339, e.g. 2026-11-28T10:00:00Z)", err)
		}
	}
	if *toS != "" {
		if to, err = time.Parse(time.RFC3339, *toS); err != nil {
			return usageError("--to: %v (use RFC 3339)", err)
		}
	}
	modes := 0
	for _, on := range []bool{*since > 0, *fromS != "" || *toS != "", *full} {
		if on {
			modes++
		}
	}
	if modes != 1 {
		return usageError("choose one of --since D, --from T [--to T], or --full")
	}
	if *toS != "" && *fromS == "" {
		return usageError("--to needs --from")
	}
	o, err := openOneShot(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer o.close()
	sk := newSink(cfg, log, o.chat, nil)
	defer sk.Close()
	r := newReconciler(cfg, log, o.src, o.chat, sk, nil)
	var res reconcile.Result
	switch {
	case *full:
		res, err = r.Full(ctx, *dryRun)
	case *since > 0:
		res, err = r.Window(ctx, *since, *dryRun)
	default:
		res, err = r.Range(ctx, from, to, *dryRun)
	}
	if err != nil {
		return err
	}
	verb := "repaired"
	if *dryRun {
		verb = "would repair"
	}
	rate := float64(res.Checked) / max(res.Took.Seconds(), 1e-3)
	fmt.Fprintf(e.stdout, "checked %d rows in %s (%.0f rows/s); %s %d: %d missing, %d stale, %d extra; %d already equal; %d refused by chat (see sync_errors)\n",
		res.Checked, res.Took.Round(time.Millisecond), rate, verb, res.Repair.Missing+res.Repair.Stale+res.Repair.Extra,
		res.Repair.Missing, res.Repair.Stale, res.Repair.Extra, res.Repair.Same, res.Repair.Dead)
	return nil
}

// cmdVerify proves both sides equal, or names what differs (exit 3).
func cmdVerify(ctx context.Context, e *env, args []string) error {
	fs := flag.NewFlagSet("verify", flag.ContinueOnError)
	full := fs.Bool("full", false, "compare every row by key-range checksums and name up to 20 differing ids")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	cfg, log, err := e.setup(fs, args)
	if err != nil {
		return err
	}
	o, err := openOneShot(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer o.close()
	r := newReconciler(cfg, log, o.src, o.chat, nil, nil)
	rep, err := r.Verify(ctx, *full)
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(e.stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return err
		}
	} else {
		printReport(e, rep)
	}
	if !rep.Consistent {
		return &exitError{code: exitDrift, err: fmt.Errorf("drift found: chat differs from the source (run cdc reconcile --full to repair)")}
	}
	return nil
}

func printReport(e *env, rep reconcile.Report) {
	fmt.Fprintf(e.stdout, "source rows: %d\nchat rows:   %d\ndifference:  %+d\nupdated in the last hour: source %d, chat %d\n",
		rep.SourceRows, rep.ChatRows, rep.Difference, rep.SourceUpdatedLastHour, rep.ChatUpdatedLastHour)
	if rep.Full {
		fmt.Fprintf(e.stdout, "full compare: %d missing in chat, %d stale, %d extra in chat\n", rep.Missing, rep.Stale, rep.Extra)
		for _, d := range rep.Drifted {
			fmt.Fprintf(e.stdout, "  %-7s %s\n", d.Kind, d.ID)
		}
	}
	verdict := "consistent"
	if !rep.Consistent {
		verdict = "DRIFT"
	}
	fmt.Fprintf(e.stdout, "%s (%d ms)\n", verdict, rep.TookMS)
}
