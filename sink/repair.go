package sink

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/myusta/cdc/change"
	"github.com/myusta/cdc/internal/keyed"
)

// Repair makes the chat rows of keys equal to the source rows that fetch
// reads. In one chat transaction it takes the writer lock, then calls fetch,
// so the source state it writes is newer than anything any writer (the
// stream, another repair, another cdc process) has committed: a repair never
// replaces a newer version and never brings back a deleted row. Changes the
// stream applies afterwards are newer still.
func (s *Sink) Repair(ctx context.Context, keys [][]byte, fetch change.Fetch) (change.RepairResult, error) {
	var res change.RepairResult
	err := s.exclusive(ctx, "repair rows", func(ctx context.Context, conn *pgxpool.Conn) error {
		res = change.RepairResult{}
		return s.repair(ctx, conn.Conn().PgConn(), keys, fetch, &res)
	})
	if err != nil {
		return res, fmt.Errorf("repair: %w", err)
	}
	s.Stats.DeadLetters.Add(int64(res.Dead))
	return res, nil
}

// repair writes the repairs of keys in the writer's locked transaction.
func (s *Sink) repair(ctx context.Context, pc *pgconn.PgConn, keys [][]byte, fetch change.Fetch, res *change.RepairResult) error {
	// Shows in pg_stat_activity, and lets a trigger tell repairs apart.
	if err := execSimple(ctx, pc, "SET LOCAL application_name = 'cdc-repair'"); err != nil {
		return err
	}
	src, err := fetch(ctx, keys)
	if err != nil {
		return fmt.Errorf("read source rows: %w", err)
	}
	chat, err := keyed.ReadRows(ctx, pc, s.table, keys)
	if err != nil {
		return fmt.Errorf("read chat rows: %w", err)
	}
	counts, b := keyed.Plan(s.table, keys, src, chat)
	*res = counts
	// Rows in the way of the repairs (holding a unique value a repair
	// writes) are repaired too: re-read now, under the same lock, they are
	// as new as the rest.
	more := func(stuck []change.Change) ([]change.Change, error) {
		extra, err := s.blockingKeys(ctx, pc, stuck)
		if err != nil || len(extra) == 0 {
			return nil, err
		}
		src, err := fetch(ctx, extra)
		if err != nil {
			return nil, fmt.Errorf("read source rows: %w", err)
		}
		chat, err := keyed.ReadRows(ctx, pc, s.table, extra)
		if err != nil {
			return nil, fmt.Errorf("read chat rows: %w", err)
		}
		c, eb := keyed.Plan(s.table, extra, src, chat)
		dead := res.Dead
		*res = res.Add(c)
		res.Dead = dead
		return eb.Changes(), nil
	}
	if res.Dead, err = s.applyRepairs(ctx, pc, b.Changes(), more); err != nil {
		return err
	}
	// Every key now equals its source row unless it was refused again:
	// its open dead letters are settled.
	r := s.open.resolvable(s.table, len(keys), func(i int) []byte { return keys[i] })
	if r != nil {
		s.resolving = append(s.resolving, r)
	}
	return execResolve(ctx, pc, r)
}
