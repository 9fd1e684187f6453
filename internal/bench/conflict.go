package bench

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// conflictRows is the size of the conflict phase's source transaction.
const conflictRows = 10_000

// conflictPhase weighs what chat's own constraints cost when a batch needs
// the source order (sink.replay): chat gets a unique index on email, and
// one source transaction updating conflictRows rows reaches cdc, started
// after it is written, once plainly (written set-based) and once with two
// users swapping emails through a temporary value at its start, which the
// set-based write of the batch that holds it (BATCH_MAX_ROWS, 10,000, of
// the transaction's changes) trips over, so that batch is applied again
// change by change. Each is timed from cdc's start to a
// marker row committed after the transaction.
func conflictPhase(ctx context.Context, s *servers, o Options, r *Result, env map[string]string, ids []string) error {
	if _, err := s.cdc.Exec(ctx, "CREATE UNIQUE INDEX bench_email ON users (email)"); err != nil {
		return fmt.Errorf("chat unique index: %w", err)
	}
	defer func() { _, _ = s.cdc.Exec(context.WithoutCancel(ctx), "DROP INDEX IF EXISTS bench_email") }()
	batch := ids[:min(conflictRows, len(ids))]
	for rep := 0; rep < o.Reps; rep++ {
		for _, swap := range []bool{false, true} {
			// The swap comes first, so it shares the first batch with most of
			// the updates: that whole batch is applied again change by change.
			err := pgx.BeginFunc(ctx, s.source, func(tx pgx.Tx) error {
				if swap {
					if _, err := tx.Exec(ctx, fmt.Sprintf(`DO $$ DECLARE a text; b text; BEGIN
SELECT email INTO a FROM users WHERE id = '%[1]s'; SELECT email INTO b FROM users WHERE id = '%[2]s';
UPDATE users SET email = NULL, updated_at = clock_timestamp() WHERE id = '%[1]s';
UPDATE users SET email = a, updated_at = clock_timestamp() WHERE id = '%[2]s';
UPDATE users SET email = b, updated_at = clock_timestamp() WHERE id = '%[1]s'; END $$`, batch[0], batch[1])); err != nil {
						return err
					}
				}
				_, err := tx.Exec(ctx, "UPDATE users SET status = $2, updated_at = clock_timestamp() WHERE id = ANY($1::uuid[])",
					batch[2:], fmt.Sprintf("conflict-%d-%v", rep, swap))
				return err
			})
			if err != nil {
				return fmt.Errorf("conflict transaction: %w", err)
			}
			marker := fmt.Sprintf("00000000-0000-0000-0000-0000000c%03d%d", rep, map[bool]int{false: 0, true: 1}[swap])
			if err := insertMarker(ctx, s.source, marker); err != nil {
				return err
			}
			proc, err := startCDC(o.CDC, env, o.Log)
			if err != nil {
				return err
			}
			if err := waitMarker(ctx, s.cdc, marker); err != nil {
				return err
			}
			d := time.Since(proc.started)
			if err := proc.stop(); err != nil {
				return err
			}
			if swap {
				r.ConflictSwap = append(r.ConflictSwap, d)
			} else {
				r.ConflictFree = append(r.ConflictFree, d)
			}
		}
		fmt.Fprintf(o.Log, "bench: conflict %d/%d: %d-row transaction %s, with an email swap in it %s\n", rep+1, o.Reps, len(batch),
			r.ConflictFree[rep].Round(time.Millisecond), r.ConflictSwap[rep].Round(time.Millisecond))
	}
	return nil
}
