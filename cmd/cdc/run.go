package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"

	"github.com/myusta/cdc/internal/config"
	"github.com/myusta/cdc/internal/db"
	"github.com/myusta/cdc/internal/health"
	"github.com/myusta/cdc/internal/leader"
	"github.com/myusta/cdc/internal/logging"
	"github.com/myusta/cdc/internal/retry"
	"github.com/myusta/cdc/internal/schema"
	"github.com/myusta/cdc/migrations"
	"github.com/myusta/cdc/reconcile"
	"github.com/myusta/cdc/replication"
	"github.com/myusta/cdc/sink"
)

func cmdRun(ctx context.Context, e *env, args []string) error {
	cfg, log, err := e.setup(flag.NewFlagSet("run", flag.ContinueOnError), args)
	if err != nil {
		return err
	}
	if err := cfg.RequireDatabases(); err != nil {
		return err
	}
	return runDaemon(ctx, cfg, log)
}

// reconnectPolicy is the backoff for lost connections: fast attempts, then
// a probe every RETRY_MAX_DELAY, loud after MAX_RECONNECT_ATTEMPTS.
func reconnectPolicy(cfg *config.Config) retry.Policy {
	return retry.Policy{Initial: cfg.RetryInitialDelay, Max: cfg.RetryMaxDelay, Multiplier: cfg.RetryMultiplier, Loud: cfg.MaxReconnectAttempts}
}

// oneShotPolicy is the backoff of commands that end (verify, reconcile,
// errors): MAX_RETRIES retries, then the command fails.
func oneShotPolicy(cfg *config.Config) retry.Policy {
	p := writePolicy(cfg)
	p.Attempts = cfg.MaxRetries + 1
	return p
}

// writePolicy is the backoff for failed writes, loud after MAX_RETRIES.
func writePolicy(cfg *config.Config) retry.Policy {
	p := reconnectPolicy(cfg)
	p.Loud = cfg.MaxRetries
	return p
}

// daemonSource is a change source as `cdc run` drives it: the
// replication stream or the notify listener.
type daemonSource interface {
	// Run follows the source until ctx ends.
	Run(ctx context.Context) error
	// Sync waits until every change committed before the call is applied.
	Sync(ctx context.Context) error
	// progress returns the counts of changes applied so far (for the
	// periodic "synced" line) and attributes describing the position.
	progress() (counts []int64, attrs []any)
	// final returns attributes for the "cdc stopped" line.
	final() []any
}

// runDaemon is `cdc run`: preflight both sides, then follow the source in
// the configured mode until ctx ends. The sync itself (runSync) starts
// again, without the process restarting, when the watch follows a change
// of the source table (a rename, a dropped column).
func runDaemon(ctx context.Context, cfg *config.Config, log *slog.Logger) error {
	d := &daemon{cfg: cfg, log: log, start: time.Now()}
	log.Info("cdc starting", "mode", cfg.Mode, "source", logging.RedactDSN(cfg.SourceURL), "chat", logging.RedactDSN(cfg.ChatURL),
		"table", cfg.SourceTable.String()+" -> "+cfg.ChatTable.String())
	mon, stopHealth, err := startHealth(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer stopHealth()
	d.mon = mon
	if d.srcPool, err = openPool(ctx, log, "SOURCE_DATABASE_URL", cfg.SourceURL, cfg.SourcePoolSize, reconnectPolicy(cfg)); err != nil {
		return shutdownOr(ctx, err)
	}
	defer d.srcPool.Close()
	if d.chatPool, err = openPool(ctx, log, "CHAT_DATABASE_URL", cfg.ChatURL, cfg.ChatPoolSize, reconnectPolicy(cfg)); err != nil {
		return shutdownOr(ctx, err)
	}
	defer d.chatPool.Close()
	src, chat, err := d.preflight(ctx, cfg)
	if err != nil {
		return err
	}
	warnLeftovers(ctx, log, cfg, d.srcPool)
	// One active cdc per slot: a second instance stands by here (healthy,
	// not ready) until the active one stops or dies.
	lock, err := leader.Acquire(ctx, leader.Options{DSN: cfg.ChatURL, Slot: cfg.SlotName, Every: time.Second,
		Retry: reconnectPolicy(cfg), Logger: log, Standby: mon.Standby})
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	defer lock.Release()
	mon.Active()
	ctx, stopActive := context.WithCancelCause(ctx)
	var lost errgroup.Group
	defer func() { stopActive(nil); _ = lost.Wait() }()
	lost.Go(func() error {
		select {
		case <-lock.Lost():
			stopActive(leader.ErrLost)
		case <-ctx.Done():
		}
		return nil
	})
	var repairSince time.Time
	for {
		err = d.runSync(ctx, cfg, src, chat, repairSince)
		var again *syncAgain
		if !errors.As(err, &again) {
			break
		}
		cfg, repairSince = again.cfg, again.since
		if src, chat, err = d.preflight(ctx, cfg); err != nil {
			break
		}
	}
	if cause := context.Cause(ctx); errors.Is(cause, leader.ErrLost) {
		// Another instance may be active by now: exit, and let the
		// supervisor's restart stand this one by again.
		return fmt.Errorf("stopped: %w (its chat connection failed)", cause)
	}
	return err
}

// daemon is what a cdc run keeps across restarts of the sync.
type daemon struct {
	cfg               *config.Config // as configured (runSync may follow a changed one)
	log               *slog.Logger
	start             time.Time
	mon               *health.Monitor
	srcPool, chatPool *pgxpool.Pool
	drift             replication.Drift // what the watch found, across restarts of the sync
}

// syncAgain asks for the sync to start again with cfg, then repair what
// the source may not have delivered since since.
type syncAgain struct {
	cfg   *config.Config
	since time.Time
	why   string
}

func (s *syncAgain) Error() string { return "the sync starts again: " + s.why }

// preflight checks both sides for cfg and describes both tables.
func (d *daemon) preflight(ctx context.Context, cfg *config.Config) (src, chat *schema.Table, err error) {
	if cfg.Mode == config.ModeNotify {
		src, err = replication.PreflightNotify(ctx, d.srcPool, sourceSpec(cfg))
	} else {
		src, err = replication.Preflight(ctx, d.srcPool, sourceSpec(cfg))
	}
	if err != nil {
		return nil, nil, err
	}
	if chat, err = chatPreflight(ctx, d.srcPool, d.chatPool, cfg, src); err != nil {
		return nil, nil, err
	}
	return src, chat, nil
}

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

	var source daemonSource
	var rec *reconcile.Reconciler
	var watch *replication.Watch
	parts := health.Parts{Writes: writesReport{&sk.Stats}, SourcePool: d.srcPool, ChatPool: d.chatPool}
	if cfg.Mode == config.ModeNotify {
		log.Info("sync mode: notify (SYNC_MODE=notify): a trigger sends {op, id} on LISTEN/NOTIFY and cdc applies the current source rows; " +
			"notifications missed while disconnected are made up for by a reconcile on every reconnect and by the scheduled reconciler")
		n := newNotifySource(cfg, log, d.srcPool, sk, srcTable, func() *reconcile.Reconciler { return rec }, d.mon.ObserveBatch, func() { watch.Kick() })
		source = n
		parts.Source = n
	} else {
		log.Info("sync mode: replication (SYNC_MODE=replication, pgoutput slot " + cfg.SlotName + "); set SYNC_MODE=notify where the source forbids logical replication")
		slot := &replication.SlotWatcher{Pool: d.srcPool, Slot: cfg.SlotName, WarnBytes: cfg.SlotWALWarnBytes, Every: cfg.StatusInterval, Logger: log}
		goRun(slot.Run)
		stream := replication.New(d.srcPool, sk, replication.Options{
			SourceURL:      cfg.SourceURL,
			Slot:           cfg.SlotName,
			Publication:    cfg.PublicationName,
			Table:          srcTable,
			BatchMaxRows:   cfg.BatchMaxRows,
			BatchMaxWait:   cfg.BatchMaxWait,
			CopyWorkers:    cfg.CopyWorkers,
			StatusInterval: cfg.StatusInterval,
			Retry:          reconnectPolicy(cfg),
			OnStream:       func() { watch.Kick() },
			Logger:         log,
		})
		ss := &streamSource{Slot: slot, Stream: stream}
		source = ss
		parts.Source, parts.Slot = ss, slotReport{slot}
	}
	rec = newReconciler(cfg, log, src, chat, sk, source.Sync)
	window := time.Duration(float64(cfg.SyncInterval) * cfg.WindowMultiplier)
	watch = replication.NewWatch(replication.WatchOptions{
		Pool: d.srcPool, Table: srcTable, Spec: migrations.SpecFor(cfg), Notify: cfg.Mode == config.ModeNotify,
		Every: cfg.StatusInterval, RepairSince: repairSince, Drift: &d.drift, Logger: log,
		Recorded: func(ctx context.Context) (map[string]migrations.SyncedColumn, error) {
			return migrations.ReadColumns(ctx, d.chatPool, cfg.SlotName)
		},
		Repair: func(ctx context.Context, since time.Time) error {
			if _, err := rec.Range(ctx, since.Add(-window), time.Time{}, false); err != nil {
				return err
			}
			_, err := rec.Full(ctx, false) // deletes leave nothing in any window
			return err
		},
		Reload: func(spec migrations.Spec, since time.Time, why string) {
			stop(&syncAgain{cfg: withSpec(cfg, spec), since: since, why: why})
		},
	})
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

// shutdownOr is nil when ctx ended (a signal during start-up is a clean
// stop), else err.
func shutdownOr(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return nil
	}
	return err
}

// warnLeftovers warns about the other mode's objects on the source: a
// notify trigger costs every write in replication mode, and an idle slot
// keeps WAL in notify mode. `cdc migrate` in the current mode removes them.
func warnLeftovers(ctx context.Context, log *slog.Logger, cfg *config.Config, pool *pgxpool.Pool) {
	if cfg.Mode == config.ModeNotify {
		var n int
		if err := pool.QueryRow(ctx, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", cfg.SlotName).Scan(&n); err == nil && n > 0 {
			log.Warn("replication slot "+cfg.SlotName+" exists but notify mode does not read it, so it keeps WAL on the source: run cdc migrate with SYNC_MODE=notify to drop it", "slot", cfg.SlotName)
		}
		return
	}
	if ok, err := migrations.NotifyTriggerExists(ctx, pool, cfg.SourceTable); err == nil && ok {
		log.Warn("the notify-mode trigger "+migrations.NotifyTrigger+" is still installed on the source and costs every write: run cdc migrate (SYNC_MODE=replication) to drop it", "table", cfg.SourceTable)
	}
}

func sourceSpec(cfg *config.Config) replication.Source {
	return replication.Source{Spec: migrations.SpecFor(cfg).Source(), Publication: cfg.PublicationName, Secret: cfg.SecretColumns}
}

// chatPreflight checks that chat is migrated and that its table can take
// the source's values, and decides how they travel (schema.Match).
func chatPreflight(ctx context.Context, srcPool, chatPool *pgxpool.Pool, cfg *config.Config, src *schema.Table) (*schema.Table, error) {
	if err := migrations.CheckChat(ctx, chatPool); err != nil {
		if errors.Is(err, migrations.ErrNotMigrated) {
			return nil, &replication.PreflightError{Cause: err.Error(), Fix: "run cdc migrate"}
		}
		return nil, err
	}
	spec := migrations.SpecFor(cfg).Chat(src)
	t, err := replication.LoadTable(ctx, chatPool, spec, "chat", "run cdc migrate (it creates the table from the source's columns), or check CHAT_TABLE")
	if err != nil {
		return nil, err
	}
	var mismatch *schema.MismatchError
	if err := schema.Match(ctx, srcPool, chatPool, src, t, cfg.WireFormat); errors.As(err, &mismatch) {
		return nil, &replication.PreflightError{Cause: "the chat table cannot take the source's values: " + err.Error(), Fix: "change the chat columns' types (or SYNC_COLUMNS), then start again"}
	} else if err != nil {
		return nil, err
	}
	return t, nil
}

// checkStatements prepares the statements cdc runs on both sides, so that
// a table it cannot read or write stops it at start (exit 2), before it
// creates a slot, instead of failing on the first change.
func checkStatements(ctx context.Context, sk *sink.Sink, src reconcile.Side) error {
	err := sk.Check(ctx)
	if err == nil {
		err = sink.CheckSource(ctx, src.Pool, src.Table)
	}
	var ce *sink.CheckError
	if errors.As(err, &ce) {
		return &replication.PreflightError{Cause: "cdc cannot " + err.Error(), Fix: "check the tables' columns, types and privileges (cdc migrate creates a chat table that fits the source)"}
	}
	return err
}

// openPool opens a pool and waits until the database answers. Outages are
// retried (forever, loudly after MAX_RECONNECT_ATTEMPTS); a wrong password or
// database name is a configuration error.
func openPool(ctx context.Context, log *slog.Logger, varName, dsn string, size int32, p retry.Policy) (*pgxpool.Pool, error) {
	pool, err := db.NewPool(ctx, dsn, size)
	if err != nil {
		return nil, &config.Error{Var: varName, Msg: err.Error()}
	}
	what := "connect to " + varName + " (if this persists: check its host and port, and that PostgreSQL is running)"
	err = retry.Do(ctx, p, log.With("database", varName), what, func(ctx context.Context) error {
		return pool.Ping(ctx)
	})
	if err != nil {
		pool.Close()
		if cerr := connectProblem(varName, err); cerr != nil {
			return nil, cerr
		}
		if ctx.Err() == nil && retry.Transient(err) {
			return nil, fmt.Errorf("cannot reach the database of %s (%w): check its host and port, and that PostgreSQL is running and accepts TCP connections", varName, err)
		}
		return nil, fmt.Errorf("connect (%s): %w", varName, err)
	}
	return pool, nil
}

// connectProblem turns a permanent connection failure into a configuration
// error that names the variable and the fix.
func connectProblem(varName string, err error) error {
	if retry.CertificateProblem(err) {
		return &config.Error{Var: varName, Msg: "the server's TLS certificate failed verification (" + rootCause(err).Error() + "): check sslrootcert (the CA that signed it) and that the host name in the DSN is one the certificate names"}
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return nil
	}
	switch pgErr.Code {
	case "28P01", "28000":
		return &config.Error{Var: varName, Msg: "the server refused the login (" + pgErr.Message + "): check the user and password, and pg_hba.conf"}
	case "3D000":
		return &config.Error{Var: varName, Msg: pgErr.Message + ": check the database name"}
	}
	return nil
}

// rootCause is the innermost wrapped error.
func rootCause(err error) error {
	for {
		next := errors.Unwrap(err)
		if next == nil {
			return err
		}
		err = next
	}
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
