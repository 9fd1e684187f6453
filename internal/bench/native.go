package bench

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// native is PostgreSQL's own logical replication: a subscription in the
// chat server's database to the same publication cdc reads.
type native struct {
	chat      *pgxpool.Pool
	sourceDSN string
	name      string
}

func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// create subscribes with an initial copy. binary = true gives native its
// fastest transfer format, like cdc's.
func (n *native) create(ctx context.Context) error {
	_, err := n.chat.Exec(ctx, fmt.Sprintf("CREATE SUBSCRIPTION %s CONNECTION %s PUBLICATION cdc_users WITH (copy_data = true, binary = true)",
		pgx.Identifier{n.name}.Sanitize(), quoteLiteral(n.sourceDSN)))
	if err != nil {
		return fmt.Errorf("create subscription: %w", err)
	}
	return nil
}

// waitReady waits until the table's initial sync is done ('r').
func (n *native) waitReady(ctx context.Context) error {
	for {
		var state *string
		err := n.chat.QueryRow(ctx, `SELECT srsubstate::text FROM pg_subscription_rel r JOIN pg_subscription s ON s.oid = r.srsubid
WHERE s.subname = $1`, n.name).Scan(&state)
		if err != nil && err != pgx.ErrNoRows {
			return fmt.Errorf("subscription state: %w", err)
		}
		if state != nil && *state == "r" {
			return nil
		}
		if err := sleep(ctx, 10*time.Millisecond); err != nil {
			return err
		}
	}
}

func (n *native) drop(ctx context.Context) error {
	_, err := n.chat.Exec(ctx, "DROP SUBSCRIPTION IF EXISTS "+pgx.Identifier{n.name}.Sanitize())
	if err != nil {
		return fmt.Errorf("drop subscription: %w", err)
	}
	return nil
}

// enable or disable the subscription; disabling waits for the apply worker
// to exit so the consumer is really stopped.
func (n *native) enable(ctx context.Context, on bool) error {
	verb := "DISABLE"
	if on {
		verb = "ENABLE"
	}
	if _, err := n.chat.Exec(ctx, "ALTER SUBSCRIPTION "+pgx.Identifier{n.name}.Sanitize()+" "+verb); err != nil {
		return fmt.Errorf("%s subscription: %w", strings.ToLower(verb), err)
	}
	for !on {
		var workers int
		if err := n.chat.QueryRow(ctx, "SELECT count(pid) FROM pg_stat_subscription WHERE subname = $1", n.name).Scan(&workers); err != nil {
			return err
		}
		if workers == 0 {
			return nil
		}
		if err := sleep(ctx, 20*time.Millisecond); err != nil {
			return err
		}
	}
	return nil
}

func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}
