package main

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/myusta/cdc/internal/config"
	"github.com/myusta/cdc/internal/health"
	"github.com/myusta/cdc/internal/schema"
	"github.com/myusta/cdc/migrations"
	"github.com/myusta/cdc/reconcile"
	"github.com/myusta/cdc/replication"
	"github.com/myusta/cdc/sink"
	"golang.org/x/sync/errgroup"
)

// daemonSource is a change source as `cdc run` drives it: the
// replication stream or the notify listener.
type daemonSource interface {
	health.Source // what it reports to health (reports.go)
	// Run follows the source until ctx ends.
	Run(ctx context.Context) error
	// Sync waits until every change committed before the call is applied.
	Sync(ctx context.Context) error
	// progress returns the counts of changes applied so far (for the
	// periodic "synced" line) and attributes describing the position.
	progress() (counts []int64, attrs []any)
	// final returns attributes for the "cdc stopped" line.
	final() []any
	// attach, called once before Run, hands the source what is built after
	// it (the reconciler uses the source's Sync as its barrier): rec for a
	// catch-up after a reconnect, and onConnect to run on every (re)connect.
	attach(rec *reconcile.Reconciler, onConnect func())
}

// syncAgain asks for the sync to start again with cfg, then repair what
// the source may not have delivered since since.
type syncAgain struct {
	cfg   *config.Config
	since time.Time
	why   string
}

func (s *syncAgain) Error() string { return "the sync starts again: " + s.why }

// runSync follows the source with the tables src and chat until ctx ends,
// the source fails in a way it cannot retry, or the watch follows a change
// of the source table (then it returns *syncAgain). Every goroutine it
// starts has ended when it returns.
func (d *daemon) runSync(ctx context.Context, cfg *config.Config, srcTable, chatTable *schema.Table, repairSince time.Time) error {
	log := d.log
	ctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	src := reconcile.Side{Pool: d.srcPool, Table: srcTable}
	chat := reconcile.Side{Pool: d.chatPool, Table: chatTable}
	sk := newSink(cfg, log, chat, d.mon.ObserveBatch)
	defer sk.Close()
	if err := checkStatements(ctx, sk, src); err != nil {
		return err
	}
	// Every goroutine of the sync is in g and has ended when runSync
	// returns. Shutdown order: ctx ends → the source stops reading, commits
	// the batch in hand and confirms it to the slot (source.Run returns) →
	// the rest stop (stop, g.Wait) → the sink returns its connection
	// (sk.Close) → runDaemon closes the pools.
	var g errgroup.Group
	defer func() { stop(nil); _ = g.Wait() }()
	goRun := func(f func(context.Context)) {
		g.Go(func() error { f(ctx); return nil })
	}

	fill, err := d.recordColumns(ctx, cfg)
	if err != nil {
		return err
	}
	if len(fill) > 0 {
		goRun(func(ctx context.Context) { d.fillColumns(ctx, cfg, sk, srcTable, fill) })
	}

	// Built in this order: the source, the reconciler (the source's Sync is
	// its barrier), the watch (it repairs through the reconciler), and then
	// the source gets the last two (attach) before anything runs.
	source, slot := d.newSource(cfg, sk, srcTable)
	parts := health.Parts{Source: source, Writes: writesReport{&sk.Stats}, SourcePool: d.srcPool, ChatPool: d.chatPool}
	if slot != nil {
		goRun(slot.Run)
		parts.Slot = slotReport{slot}
	}
	rec := newReconciler(cfg, log, src, chat, sk, source.Sync)
	watch := d.newWatch(cfg, srcTable, rec, repairSince, func(spec migrations.Spec, since time.Time, why string) {
		stop(&syncAgain{cfg: withSpec(cfg, spec), since: since, why: why})
	})
	source.attach(rec, watch.Kick)
	parts.Reconciles, parts.Objects = reconcileReport{&rec.Stats}, &d.drift
	d.mon.Attach(parts)
	goRun(func(ctx context.Context) { reportProgress(ctx, log, source, progressEvery) })
	goRun(watch.Run)
	goRun(func(ctx context.Context) { _ = rec.Run(ctx) }) // it logs its own failures
	err = source.Run(ctx)
	stop(nil) // the source ended (shutdown, a reload, or an error it cannot retry)
	_ = g.Wait()
	var again *syncAgain
	if errors.As(context.Cause(ctx), &again) {
		log.Warn("starting the sync again: "+again.why, "sync_columns", strings.Join(again.cfg.Columns, ","), "table", again.cfg.SourceTable.String())
		return again
	}
	log.Info("cdc stopped", append(source.final(),
		"rows_upserted", sk.Stats.Upserts.Load(), "rows_deleted", sk.Stats.Deletes.Load(),
		"batches", sk.Stats.Batches.Load(), "dead_letters", sk.Stats.DeadLetters.Load(),
		"reconcile_runs", rec.Stats.Runs.Load(), "uptime", time.Since(d.start).Round(time.Millisecond).String())...)
	return err
}

// recordColumns brings chat's record of the synced columns (cdc_columns)
// to cfg and returns the indexes of the columns that must be backfilled:
// added to SYNC_COLUMNS (or mapped from another source column) since the
// record was last complete.
func (d *daemon) recordColumns(ctx context.Context, cfg *config.Config) ([]int, error) {
	ch, err := migrations.RecordColumns(ctx, d.chatPool, cfg.SlotName, migrations.SpecFor(cfg))
	if err != nil {
		return nil, err
	}
	if len(ch.Removed) > 0 {
		d.log.Warn("no longer synced (not in SYNC_COLUMNS): chat keeps these columns and their values, chat's own from now on", "columns", strings.Join(ch.Removed, ", "))
	}
	rec, err := migrations.ReadColumns(ctx, d.chatPool, cfg.SlotName)
	if err != nil {
		return nil, err
	}
	var fill []int
	for i, c := range cfg.ChatColumns {
		if !rec[c].Filled {
			fill = append(fill, i)
		}
	}
	return fill, nil
}

// fillColumns backfills the columns at fill (a column-only pass under the
// writer lock, while the stream runs) and records them filled. A failure
// leaves them unfilled for the next start.
func (d *daemon) fillColumns(ctx context.Context, cfg *config.Config, sk *sink.Sink, src *schema.Table, fill []int) {
	names := make([]string, len(fill))
	for i, c := range fill {
		names[i] = cfg.ChatColumns[c]
	}
	what := "columns " + strings.Join(names, ", ")
	var estimate int64
	_ = d.srcPool.QueryRow(ctx, "SELECT GREATEST(reltuples, 0)::int8 FROM pg_class WHERE oid = $1::regclass", src.Ident()).Scan(&estimate)
	d.log.Info("backfilling "+what+" (added to SYNC_COLUMNS, or mapped from another source column) for the existing rows: one pass over the source, only these columns, while the stream runs", "rows_about", estimate)
	start := time.Now()
	res, err := sk.Backfill(ctx, d.srcPool, src, fill, sink.BackfillProgress(d.log, what, estimate, progressEvery))
	if err == nil {
		err = migrations.MarkFilled(ctx, d.chatPool, cfg.SlotName, names, true)
	}
	if err != nil {
		if ctx.Err() == nil {
			d.log.Error("backfilling "+what+" failed; the next start of cdc run tries again (cdc reconcile --full repairs them meanwhile)", "err", err)
		}
		return
	}
	d.log.Info("backfilled "+what, "rows", res.Read, "updated", res.Updated, "took", time.Since(start).Round(time.Millisecond).String())
}

// withSpec is cfg following the source table and columns of spec.
func withSpec(cfg *config.Config, spec migrations.Spec) *config.Config {
	c := *cfg
	c.SourceTable, c.Columns, c.ChatColumns, c.KeyColumns, c.UpdatedAtColumn = spec.SourceTable, spec.Columns, spec.ChatColumns, spec.Key, spec.UpdatedAt
	return &c
}

// newSource builds the change source of cfg's mode; the slot watcher too
// in replication mode (the caller runs it).
func (d *daemon) newSource(cfg *config.Config, sk *sink.Sink, srcTable *schema.Table) (daemonSource, *replication.SlotWatcher) {
	log := d.log
	if cfg.Mode == config.ModeNotify {
		log.Info("sync mode: notify (SYNC_MODE=notify): a trigger sends {op, id} on LISTEN/NOTIFY and cdc applies the current source rows; " +
			"notifications missed while disconnected are made up for by a reconcile on every reconnect and by the scheduled reconciler")
		return newNotifySource(cfg, log, d.srcPool, sk, srcTable, d.mon.ObserveBatch), nil
	}
	log.Info("sync mode: replication (SYNC_MODE=replication, pgoutput slot " + cfg.SlotName + "); set SYNC_MODE=notify where the source forbids logical replication")
	slot := &replication.SlotWatcher{Pool: d.srcPool, Slot: cfg.SlotName, WarnBytes: cfg.SlotWALWarnBytes, Every: cfg.StatusInterval, Logger: log}
	stream := replication.New(d.srcPool, sk, replication.Options{
		SourceURL:      cfg.ReplicationDSN(),
		Slot:           cfg.SlotName,
		Publication:    cfg.PublicationName,
		Table:          srcTable,
		BatchMaxRows:   cfg.BatchMaxRows,
		BatchMaxBytes:  cfg.BatchMaxMB << 20,
		BatchMaxWait:   cfg.BatchMaxWait,
		CopyWorkers:    cfg.CopyWorkers,
		StatusInterval: cfg.StatusInterval,
		SpoolDir:       cfg.SpoolDir,
		Primary:        d.primary,
		Retry:          reconnectPolicy(cfg),
		Logger:         log,
	})
	return &streamSource{Slot: slot, Stream: stream}, slot
}

// newWatch builds the watch of cdc's objects on the source: it repairs a
// gap through rec (a window from the gap's start, then a full compare,
// since deletes leave nothing in any window) and calls reload to follow a
// change.
func (d *daemon) newWatch(cfg *config.Config, srcTable *schema.Table, rec *reconcile.Reconciler, repairSince time.Time,
	reload func(spec migrations.Spec, since time.Time, why string)) *replication.Watch {
	window := time.Duration(float64(cfg.SyncInterval) * cfg.WindowMultiplier)
	return replication.NewWatch(replication.WatchOptions{
		Pool: d.srcPool, Primary: d.primary, Table: srcTable, Spec: migrations.SpecFor(cfg), Notify: cfg.Mode == config.ModeNotify,
		Every: cfg.StatusInterval, RepairSince: repairSince, Drift: &d.drift, Logger: d.log,
		Recorded: func(ctx context.Context) (map[string]migrations.SyncedColumn, error) {
			return migrations.ReadColumns(ctx, d.chatPool, cfg.SlotName)
		},
		Repair: func(ctx context.Context, since time.Time) error {
			if _, err := rec.Range(ctx, since.Add(-window), time.Time{}, false); err != nil {
				return err
			}
			_, err := rec.Full(ctx, false)
			return err
		},
		Reload: reload,
	})
}

// progressEvery is how often `cdc run` logs what it synced.
const progressEvery = 10 * time.Second

// reportProgress logs, every interval in which something happened, how
// many changes were synced and where the source stands.
func reportProgress(ctx context.Context, log *slog.Logger, src daemonSource, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	var last []int64
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now, attrs := src.progress()
		if slices.Equal(now, last) {
			continue
		}
		delta := make([]int64, len(now))
		for i := range now {
			delta[i] = now[i]
			if i < len(last) {
				delta[i] -= last[i]
			}
		}
		log.Info("synced", append(countAttrs(src, delta), append([]any{"interval", every.String()}, attrs...)...)...)
		last = now
	}
}

// countAttrs names the counts of a source's progress.
func countAttrs(src daemonSource, counts []int64) []any {
	names := []string{"inserts", "updates", "deletes"}
	if _, ok := src.(*notifySource); ok {
		names = []string{"notifications", "rows_upserted", "rows_deleted"}
	}
	var attrs []any
	for i, c := range counts {
		attrs = append(attrs, names[i], c)
	}
	return attrs
}

// streamSource is the replication stream as a daemonSource.
type streamSource struct {
	*replication.Stream
	Slot *replication.SlotWatcher
}

// attach runs onConnect each time streaming (re)starts; the stream needs
// no catch-up (the slot keeps what it has not confirmed).
func (s *streamSource) attach(_ *reconcile.Reconciler, onConnect func()) { s.OnStream = onConnect }

func (s *streamSource) progress() ([]int64, []any) {
	st := &s.Stats
	return []int64{st.Inserts.Load(), st.Updates.Load(), st.Deletes.Load()},
		[]any{"latency_ms", time.Duration(st.Latency.Load()).Milliseconds(), "applied_lsn", pglogrepl.LSN(st.Applied.Load())}
}

func (s *streamSource) final() []any {
	st := &s.Stats
	return []any{"inserts", st.Inserts.Load(), "updates", st.Updates.Load(), "deletes", st.Deletes.Load(),
		"truncates", st.Truncates.Load(),
		"applied_lsn", pglogrepl.LSN(st.Applied.Load()), "confirmed_lsn", pglogrepl.LSN(st.Confirmed.Load())}
}
