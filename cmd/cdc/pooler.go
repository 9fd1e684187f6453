package main

import (
	"context"
	"errors"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/myusta/cdc/internal/config"
	"github.com/myusta/cdc/internal/db"
)

// checkReplicationConn opens the replication connection once at start, so
// that a DSN that can never carry one fails now, naming the variable,
// rather than in the stream's reconnect loop. A connection pooler cannot
// carry it (PgBouncer before 1.23 refuses the replication startup
// parameter). Other failures are left to the stream, which retries them.
func checkReplicationConn(ctx context.Context, cfg *config.Config) error {
	name := "SOURCE_DATABASE_URL"
	if cfg.ReplicationURL != "" {
		name = "SOURCE_REPLICATION_URL"
	}
	conn, err := db.ConnectReplication(ctx, cfg.ReplicationDSN())
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && strings.Contains(pgErr.Message, "unsupported startup parameter: replication") {
			return &config.Error{Var: name, Msg: "the replication connection cannot go through a connection pooler (it answered " + pgErr.Message +
				"): set SOURCE_REPLICATION_URL to the source server's own host and port; the queries may keep using the pooler in SOURCE_DATABASE_URL"}
		}
		return nil
	}
	_ = conn.Close(ctx)
	return nil
}
