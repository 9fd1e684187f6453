package pglocal

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// querier is what MoveRestartLSN needs of a pool or connection.
type querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// MoveRestartLSN waits, checkpointing every 200 ms, until the restart_lsn
// of slot passes the server's WAL position at the call, so that the
// slot's next session re-reads nothing written before it (the walsender
// spills what it re-reads up to the confirmed position). Each checkpoint
// logs the running transactions the walsender needs to move restart_lsn;
// the slot's consumer must be running and confirming.
func MoveRestartLSN(ctx context.Context, db querier, slot string, within time.Duration) error {
	var mark string
	if err := db.QueryRow(ctx, "SELECT pg_current_wal_lsn()::text").Scan(&mark); err != nil {
		return fmt.Errorf("read the WAL position: %w", err)
	}
	for deadline := time.Now().Add(within); ; {
		if _, err := db.Exec(ctx, "CHECKPOINT"); err != nil {
			return fmt.Errorf("checkpoint: %w", err)
		}
		var past bool
		if err := db.QueryRow(ctx, "SELECT restart_lsn > $2::pg_lsn FROM pg_replication_slots WHERE slot_name = $1", slot, mark).Scan(&past); err != nil {
			return fmt.Errorf("read slot %s: %w", slot, err)
		}
		if past {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("slot %s's restart_lsn did not pass %s within %s", slot, mark, within)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}
