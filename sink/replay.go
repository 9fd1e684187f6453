package sink

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/myusta/cdc/change"
	"github.com/myusta/cdc/internal/keyed"
)

// replayChunk bounds the changes sent in one pipeline while replaying.
const replayChunk = 1000

// errReplay marks a replay result that does not line up with the changes
// sent (a failure of the savepoint statements themselves).
var errReplay = errors.New("replay in source order: unexpected result")

// replay applies b again after chat refused it set-based, in source
// order: each source transaction of the batch on its own, set-based
// (compacted within the transaction), and a transaction chat refuses so,
// one change at a time in the order the changes came (replayRows). Applied
// so, the changes pass every constraint of chat's that the source's own
// order passes: a unique email that two users swap through a temporary
// value, within one transaction or across several, which the batch's
// compacted write (final values only, all at once) trips over; a
// self-referencing foreign key whose rows one transaction inserts
// together, in any order.
func (s *Sink) replay(ctx context.Context, pc *pgconn.PgConn, b *change.Batch) (dead int, err error) {
	start := time.Now()
	txs := b.Transactions()
	for _, tx := range txs {
		if len(txs) > 1 {
			if err := execSimple(ctx, pc, "SAVEPOINT cdc_tx"); err != nil {
				return 0, err
			}
			d, err := s.setBased(ctx, pc, tx)
			if err == nil {
				dead += d
				if err := execSimple(ctx, pc, "RELEASE SAVEPOINT cdc_tx"); err != nil {
					return 0, err
				}
				continue
			}
			if !keyed.RowRejected(err) {
				return 0, err
			}
			if err := execSimple(ctx, pc, "ROLLBACK TO SAVEPOINT cdc_tx; RELEASE SAVEPOINT cdc_tx"); err != nil {
				return 0, err
			}
		}
		d, err := s.replayRows(ctx, pc, tx.Log())
		if err != nil {
			return 0, err
		}
		dead += d
	}
	s.log.Info("applied a batch in source order", "transactions", len(txs), "changes", len(b.Log()), "dead_letters", dead,
		"took_ms", time.Since(start).Milliseconds())
	return dead, nil
}

// replayRows applies log one change at a time, each under a savepoint, in
// the open transaction; a change chat refuses even in that order is
// recorded as a dead letter and the rest go on. Changes are sent in
// pipelines; each refusal costs one more round trip.
func (s *Sink) replayRows(ctx context.Context, pc *pgconn.PgConn, log []change.Change) (dead int, err error) {
	for from := 0; from < len(log); {
		to := min(from+replayChunk, len(log))
		var batch pgconn.Batch
		for i := from; i < to; i++ {
			batch.ExecParams("SAVEPOINT cdc_row", nil, nil, nil, nil)
			s.queueOne(&batch, &log[i])
			batch.ExecParams("RELEASE SAVEPOINT cdc_row", nil, nil, nil, nil)
		}
		results, err := pc.ExecBatch(ctx, &batch).ReadAll()
		for j := 1; j < len(results); j += 3 {
			c := &log[from+j/3]
			if c.Op == change.OpUpsert && c.Unchanged != 0 && results[j].CommandTag.RowsAffected() == 0 {
				dead++
				if derr := s.deadLetter(ctx, pc, c, errMissingRow); derr != nil {
					return 0, derr
				}
			}
		}
		if err == nil {
			from = to
			continue
		}
		// The statements before the failing one completed: it is the
		// change after them, refused in source order.
		failed := from + len(results)/3
		if !keyed.RowRejected(err) || len(results)%3 != 1 || failed >= to {
			if keyed.RowRejected(err) {
				return 0, fmt.Errorf("%w: %w", errReplay, err)
			}
			return 0, err
		}
		if rerr := execSimple(ctx, pc, "ROLLBACK TO SAVEPOINT cdc_row; RELEASE SAVEPOINT cdc_row"); rerr != nil {
			return 0, rerr
		}
		dead++
		if derr := s.deadLetter(ctx, pc, &log[failed], err); derr != nil {
			return 0, derr
		}
		from = failed + 1
	}
	return dead, nil
}

// queueOne queues the statement applying one change as it came.
func (s *Sink) queueOne(batch *pgconn.Batch, c *change.Change) {
	switch {
	case c.Op == change.OpTruncate:
		batch.ExecParams(s.sql.truncate, nil, nil, nil, nil)
	case c.Op == change.OpUpsert && c.Unchanged != 0:
		s.queuePartial(batch, c)
	default:
		one := []change.Change{*c}
		p, f := s.enc.arrays(s.table, one, []int{0}, c.Op == change.OpDelete)
		stmt := s.stmts[stmtUpsert]
		if c.Op == change.OpDelete {
			stmt = s.stmts[stmtDelete]
		}
		batch.ExecStatement(stmt, cloneParams(p), cloneFormats(f), nil)
	}
}
