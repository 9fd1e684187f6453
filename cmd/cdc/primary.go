package main

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/myusta/cdc/internal/config"
	"github.com/myusta/cdc/internal/retry"
	"github.com/myusta/cdc/replication"
)

// openPrimary finds out whether the source cdc reads is a hot standby.
// It returns nil when it is not. When it is, decoding and the first copy
// run on the standby (PostgreSQL 16+), and what only a primary can do —
// the publication, the grants, their restoration by the watch — goes
// through SOURCE_PRIMARY_URL, whose pool it returns; without that DSN,
// on a standby older than 16 and in notify mode (a standby runs no
// triggers) it refuses with exit 2.
func openPrimary(ctx context.Context, log *slog.Logger, cfg *config.Config, srcPool *pgxpool.Pool, p retry.Policy) (*pgxpool.Pool, error) {
	var standby bool
	var version int
	var feedback string
	err := srcPool.QueryRow(ctx, "SELECT pg_is_in_recovery(), current_setting('server_version_num')::int, current_setting('hot_standby_feedback')").
		Scan(&standby, &version, &feedback)
	if err != nil {
		return nil, fmt.Errorf("read whether the source is a standby: %w", err)
	}
	if !standby {
		if cfg.PrimaryURL != "" {
			log.Info("SOURCE_DATABASE_URL names a primary: SOURCE_PRIMARY_URL is not needed and not used")
		}
		return nil, nil
	}
	switch {
	case cfg.Mode == config.ModeNotify:
		return nil, &replication.PreflightError{Cause: "SOURCE_DATABASE_URL names a hot standby, and notify mode needs the primary (a standby runs no triggers and sends no notifications)",
			Fix: "point SOURCE_DATABASE_URL at the primary, or use SYNC_MODE=replication (a standby of PostgreSQL 16+ can serve it)"}
	case version < 160000:
		return nil, &replication.PreflightError{Cause: fmt.Sprintf("SOURCE_DATABASE_URL names a hot standby of PostgreSQL %d: logical decoding on a standby needs 16 or later", version/10000),
			Fix: "point SOURCE_DATABASE_URL at the primary, or upgrade the standby to 16+"}
	case cfg.PrimaryURL == "":
		return nil, &config.Error{Var: "SOURCE_PRIMARY_URL", Msg: "is required: SOURCE_DATABASE_URL names a hot standby, and the publication and grants cdc needs are made and checked on the primary (set it to the primary's DSN)"}
	}
	if feedback != "on" {
		log.Warn("hot_standby_feedback is off on the source standby: the primary may remove rows the slot still needs and the standby then invalidates the slot (cdc recreates it and copies again); turn it on, with a physical slot for the standby (primary_slot_name)")
	}
	primary, err := openPool(ctx, log, "SOURCE_PRIMARY_URL", cfg.PrimaryURL, 2, p)
	if err != nil {
		return nil, err
	}
	if err := primary.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&standby); err != nil {
		primary.Close()
		return nil, fmt.Errorf("read whether SOURCE_PRIMARY_URL is a primary: %w", err)
	}
	if standby {
		primary.Close()
		return nil, &config.Error{Var: "SOURCE_PRIMARY_URL", Msg: "names a standby too: set it to the primary's DSN"}
	}
	log.Info("reading the source from a hot standby: the slot and the first copy are on the standby; the publication and grants are on the primary (SOURCE_PRIMARY_URL)")
	return primary, nil
}

// orPool is primary when there is one, else pool.
func orPool(primary, pool *pgxpool.Pool) *pgxpool.Pool {
	if primary != nil {
		return primary
	}
	return pool
}
