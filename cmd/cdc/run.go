package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"

	"github.com/myusta/cdc/change"
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

// runDaemon is `cdc run`: preflight both sides, then follow the source in
// the configured mode until ctx ends. The sync itself (runSync) starts
// again, without the process restarting, when the watch follows a change
// of the source table (a rename, a dropped column).
func runDaemon(ctx context.Context, cfg *config.Config, log *slog.Logger) error {
	d := &daemon{log: log, start: time.Now()}
	log.Info("cdc starting", "mode", cfg.Mode, "source", logging.RedactDSN(cfg.SourceURL), "chat", logging.RedactDSN(cfg.ChatURL),
		"table", cfg.SourceTable.String()+" -> "+cfg.ChatTable.String())
	mon, stopHealth, err := startHealth(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer stopHealth()
	d.mon = mon
	if cfg.AlertWebhookURL != "" {
		// The notifier only queues what the monitor reports (OnChange) and
		// posts from its own goroutine, joined here on the way out.
		host, _ := os.Hostname()
		hook, err := health.NewWebhook(health.WebhookOptions{URL: cfg.AlertWebhookURL, Host: host, Slot: cfg.SlotName, Mode: cfg.Mode,
			Retry: oneShotPolicy(cfg), Logger: log})
		if err != nil {
			return &config.Error{Var: "ALERT_WEBHOOK_URL", Msg: err.Error()}
		}
		alertCtx, stopAlerts := context.WithCancel(ctx)
		var alerts errgroup.Group
		alerts.Go(func() error { hook.Run(alertCtx); return nil })
		defer func() { mon.OnChange(nil); stopAlerts(); _ = alerts.Wait() }()
		mon.OnChange(hook.Notify)
	}
	if d.srcPool, err = openPool(ctx, log, "SOURCE_DATABASE_URL", cfg.SourceURL, cfg.SourcePoolSize, reconnectPolicy(cfg)); err != nil {
		return shutdownOr(ctx, err)
	}
	defer d.srcPool.Close()
	if d.chatPool, err = openPool(ctx, log, "CHAT_DATABASE_URL", cfg.ChatURL, cfg.ChatPoolSize, reconnectPolicy(cfg)); err != nil {
		return shutdownOr(ctx, err)
	}
	defer d.chatPool.Close()
	logRoundTrips(ctx, log, d.srcPool, d.chatPool)
	if d.primary, err = openPrimary(ctx, log, cfg, d.srcPool, reconnectPolicy(cfg)); err != nil {
		return shutdownOr(ctx, err)
	}
	if d.primary != nil {
		defer d.primary.Close()
	}
	src, chat, err := d.preflight(ctx, cfg)
	if err != nil {
		return err
	}
	replication.LogFeatures(ctx, log, d.srcPool, cfg.Mode == config.ModeReplication)
	warnLeftovers(ctx, log, cfg, d.srcPool)
	for {
		err = d.lead(ctx, cfg, src, chat)
		if !errors.Is(err, leader.ErrLost) || ctx.Err() != nil {
			return err
		}
		// Another instance may be active by now: stand by again, as a
		// new process would.
		log.Warn("lost the leader lock (its chat connection failed while another cdc took it): standing by again")
		if src, chat, err = d.preflight(ctx, cfg); err != nil {
			return err
		}
	}
}

// lead waits for the leader lock (one active cdc per slot: a second
// instance stands by here, healthy and not ready, until the active one
// stops or dies), then syncs until ctx ends or the lock is lost, when it
// returns leader.ErrLost.
func (d *daemon) lead(ctx context.Context, cfg *config.Config, src, chat *schema.Table) error {
	lock, err := leader.Acquire(ctx, leader.Options{DSN: cfg.ChatURL, Slot: cfg.SlotName, Every: time.Second,
		Retry: reconnectPolicy(cfg), Logger: d.log, Standby: d.mon.Standby})
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	defer lock.Release()
	d.mon.Active()
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
		return cause
	}
	return err
}

// daemon is what a cdc run keeps across restarts of the sync.
type daemon struct {
	log               *slog.Logger
	start             time.Time
	mon               *health.Monitor
	srcPool, chatPool *pgxpool.Pool
	primary           *pgxpool.Pool     // the source's primary when the source is a hot standby, else nil
	drift             replication.Drift // what the watch found, across restarts of the sync
}

// preflight checks both sides for cfg and describes both tables.
func (d *daemon) preflight(ctx context.Context, cfg *config.Config) (src, chat *schema.Table, err error) {
	if cfg.Mode == config.ModeNotify {
		src, err = replication.PreflightNotify(ctx, d.srcPool, sourceSpec(cfg))
	} else if err = checkReplicationConn(ctx, cfg); err == nil {
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
	var ce *change.CheckError
	if errors.As(err, &ce) {
		return &replication.PreflightError{Cause: "cdc cannot " + err.Error(), Fix: "check the tables' columns, types and privileges (cdc migrate creates a chat table that fits the source)"}
	}
	return err
}

// openPool opens a pool and waits until the database answers. Outages are
// retried (forever, loudly after MAX_RECONNECT_ATTEMPTS); a wrong password or
// database name is a configuration error, and so is a pooler that shares
// server sessions between clients (db.CheckSession).
func openPool(ctx context.Context, log *slog.Logger, varName, dsn string, size int32, p retry.Policy) (*pgxpool.Pool, error) {
	pool, err := db.NewPool(ctx, dsn, size)
	if err != nil {
		return nil, &config.Error{Var: varName, Msg: err.Error()}
	}
	what := "connect to " + varName + " (if this persists: check its host and port, and that PostgreSQL is running)"
	err = retry.Do(ctx, p, log.With("database", varName), what, func(ctx context.Context) error {
		// The probe comes first: in a pool's connections cdc's session
		// settings would stay behind on a shared server session.
		if err := db.CheckSession(ctx, dsn); err != nil {
			return err
		}
		return pool.Ping(ctx)
	})
	if err != nil {
		pool.Close()
		var shared *db.SharedSessionError
		if errors.As(err, &shared) {
			return nil, &config.Error{Var: varName, Msg: shared.Error()}
		}
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
