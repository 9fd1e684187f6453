package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/myusta/cdc/internal/config"
	"github.com/myusta/cdc/internal/db"
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

// writePolicy is the backoff for failed writes, loud after MAX_RETRIES.
func writePolicy(cfg *config.Config) retry.Policy {
	p := reconnectPolicy(cfg)
	p.Loud = cfg.MaxRetries
	return p
}

// runDaemon is `cdc run`: preflight both sides, then stream until ctx ends.
func runDaemon(ctx context.Context, cfg *config.Config, log *slog.Logger) error {
	start := time.Now()
	log.Info("cdc starting", "mode", cfg.Mode, "source", logging.RedactDSN(cfg.SourceURL), "chat", logging.RedactDSN(cfg.ChatURL),
		"table", cfg.SourceTable+" -> "+cfg.ChatTable)
	if cfg.Mode != config.ModeReplication {
		return &config.Error{Var: "SYNC_MODE", Msg: "notify mode is not available in this version yet: use replication"}
	}
	log.Info("sync mode: replication (pgoutput slot); set SYNC_MODE=notify where the source forbids logical replication")
	srcPool, err := openPool(ctx, log, "SOURCE_DATABASE_URL", cfg.SourceURL, cfg.SourcePoolSize, reconnectPolicy(cfg))
	if err != nil {
		return err
	}
	defer srcPool.Close()
	chatPool, err := openPool(ctx, log, "CHAT_DATABASE_URL", cfg.ChatURL, cfg.ChatPoolSize, reconnectPolicy(cfg))
	if err != nil {
		return err
	}
	defer chatPool.Close()

	srcTable, err := replication.Preflight(ctx, srcPool, sourceSpec(cfg))
	if err != nil {
		return err
	}
	chatTable, err := chatPreflight(ctx, chatPool, cfg, srcTable)
	if err != nil {
		return err
	}
	src := reconcile.Side{Pool: srcPool, Table: srcTable}
	chat := reconcile.Side{Pool: chatPool, Table: chatTable}
	sk := newSink(cfg, log, chat)
	defer sk.Close()
	st := replication.New(srcPool, sk, replication.Options{
		SourceURL:      cfg.SourceURL,
		Slot:           cfg.SlotName,
		Publication:    cfg.PublicationName,
		Table:          srcTable,
		BatchMaxRows:   cfg.BatchMaxRows,
		StatusInterval: cfg.StatusInterval,
		Retry:          reconnectPolicy(cfg),
		Logger:         log,
	})
	go reportProgress(ctx, log, st, progressEvery)
	rec := newReconciler(cfg, log, src, chat, sk, st.Sync)
	recDone := make(chan error, 1)
	go func() { recDone <- rec.Run(ctx) }()
	err = st.Run(ctx)
	<-recDone
	logFinalStats(log, st, sk, start)
	return err
}

func sourceSpec(cfg *config.Config) replication.Source {
	return replication.Source{
		Table:       cfg.SourceTable,
		Columns:     cfg.Columns,
		Key:         cfg.KeyColumn,
		UpdatedAt:   cfg.UpdatedAtColumn,
		Publication: cfg.PublicationName,
		Secret:      cfg.SecretColumns,
	}
}

// chatPreflight checks that chat is migrated and that its table can take
// the source's values.
func chatPreflight(ctx context.Context, pool *pgxpool.Pool, cfg *config.Config, src *schema.Table) (*schema.Table, error) {
	if err := migrations.CheckChat(ctx, pool); err != nil {
		if errors.Is(err, migrations.ErrNotMigrated) {
			return nil, &replication.PreflightError{Cause: err.Error(), Fix: "run cdc migrate"}
		}
		return nil, err
	}
	spec := sourceSpec(cfg)
	spec.Table = cfg.ChatTable
	t, err := replication.LoadTable(ctx, pool, spec, "chat", "run cdc migrate (it creates the table from the source's columns), or check CHAT_TABLE")
	if err != nil {
		return nil, err
	}
	if err := schema.Compatible(src, t); err != nil {
		return nil, &replication.PreflightError{Cause: err.Error(), Fix: "cdc writes values in binary form, so both sides need the same column types"}
	}
	return t, nil
}

// openPool opens a pool and waits until the database answers. Outages are
// retried (forever, loudly after MAX_RECONNECT_ATTEMPTS); a wrong password or
// database name is a configuration error.
func openPool(ctx context.Context, log *slog.Logger, varName, dsn string, size int32, p retry.Policy) (*pgxpool.Pool, error) {
	pool, err := db.NewPool(ctx, dsn, size)
	if err != nil {
		return nil, &config.Error{Var: varName, Msg: err.Error()}
	}
	err = retry.Do(ctx, p, log.With("database", varName), "connect", func(ctx context.Context) error {
		return pool.Ping(ctx)
	})
	if err != nil {
		pool.Close()
		if cerr := connectProblem(varName, err); cerr != nil {
			return nil, cerr
		}
		return nil, fmt.Errorf("connect (%s): %w", varName, err)
	}
	return pool, nil
}

// connectProblem turns a permanent connection failure into a configuration
// error that names the variable and the fix.
func connectProblem(varName string, err error) error {
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

// progressEvery is how often `cdc run` logs what it synced.
const progressEvery = 10 * time.Second

// reportProgress logs, every interval in which something happened, how
// many changes were synced and how far behind the source the chat side was.
func reportProgress(ctx context.Context, log *slog.Logger, st *replication.Stream, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	var last [3]int64
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := [3]int64{st.Stats.Inserts.Load(), st.Stats.Updates.Load(), st.Stats.Deletes.Load()}
		if now == last {
			continue
		}
		log.Info("synced", "inserts", now[0]-last[0], "updates", now[1]-last[1], "deletes", now[2]-last[2],
			"interval", every.String(), "latency_ms", time.Duration(st.Stats.Latency.Load()).Milliseconds(),
			"applied_lsn", pglogrepl.LSN(st.Stats.Applied.Load()))
		last = now
	}
}

func logFinalStats(log *slog.Logger, st *replication.Stream, sk *sink.Sink, start time.Time) {
	log.Info("cdc stopped",
		"inserts", st.Stats.Inserts.Load(), "updates", st.Stats.Updates.Load(), "deletes", st.Stats.Deletes.Load(),
		"truncates", st.Stats.Truncates.Load(),
		"rows_upserted", sk.Stats.Upserts.Load(), "rows_deleted", sk.Stats.Deletes.Load(),
		"batches", sk.Stats.Batches.Load(), "dead_letters", sk.Stats.DeadLetters.Load(),
		"applied_lsn", pglogrepl.LSN(st.Stats.Applied.Load()), "confirmed_lsn", pglogrepl.LSN(st.Stats.Confirmed.Load()),
		"uptime", time.Since(start).Round(time.Millisecond).String())
}
