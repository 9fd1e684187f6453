package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/myusta/cdc/internal/retry"
	"github.com/myusta/cdc/migrations"
	"github.com/myusta/cdc/reconcile"
	"github.com/myusta/cdc/sink"
)

// reconcilePhase times the reconciler on cdc's chat table once it equals
// the source: `cdc verify --full` over every row, and one windowed run over
// a 3-minute window in which 18 % of the rows changed (1,000 changes/s for
// 3 minutes on 1M rows).
func reconcilePhase(ctx context.Context, s *servers, o Options, r *Result, env map[string]string) error {
	st, ct, err := migrations.LoadTables(ctx, s.source, s.cdc, migrations.SpecFor(s.cfg), s.cfg.WireFormat)
	if err != nil {
		return err
	}
	// The steady phase and the ramps left dead rows behind; autovacuum would
	// clear them in a while on a real server, so vacuum first and time the
	// compare of a table at rest.
	for i, p := range []*pgxpool.Pool{s.source, s.cdc} {
		if _, err := p.Exec(ctx, "VACUUM ANALYZE users"); err != nil {
			return fmt.Errorf("vacuum: %w", err)
		}
		// What the compare reads: the heap, which VACUUM does not shrink.
		if err := p.QueryRow(ctx, "SELECT pg_relation_size('users')").Scan(&r.VerifyHeap[i]); err != nil {
			return fmt.Errorf("table size: %w", err)
		}
	}
	sk := sink.New(s.cdc, ct, sink.Options{Slot: slot, Retry: retry.Policy{Initial: 100 * time.Millisecond, Max: time.Second, Multiplier: 2, Loud: 3}})
	defer sk.Close()
	rec := reconcile.New(reconcile.Side{Pool: s.source, Table: st}, reconcile.Side{Pool: s.cdc, Table: ct}, sk,
		reconcile.Options{Interval: time.Minute, Multiplier: 3, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	for rep := 0; rep < o.Reps; rep++ {
		start := time.Now()
		v, err := rec.Verify(ctx, true)
		if err != nil {
			return err
		}
		if !v.Consistent {
			return fmt.Errorf("verify --full found drift on equal tables: %+v", v)
		}
		r.VerifyFull = append(r.VerifyFull, time.Since(start))
	}

	// The window is to hold the rows changed here: move out of it what
	// earlier phases stamped in the last minutes (the 1M-row transaction
	// lands in it otherwise, sessions 10-13). cdc applies both updates.
	if _, err := s.source.Exec(ctx, `UPDATE users SET updated_at = updated_at - interval '1 hour'
WHERE updated_at > now() - interval '10 minutes'`); err != nil {
		return fmt.Errorf("move earlier changes out of the window: %w", err)
	}
	tag, err := s.source.Exec(ctx, `UPDATE users SET status = 'window', updated_at = now() - random() * interval '170 seconds'
WHERE abs(hashtext(id::text)) % 100 < 18`)
	if err != nil {
		return err
	}
	r.WindowChanged = tag.RowsAffected()
	proc, err := startCDC(o.CDC, env, o.Log)
	if err != nil {
		return err
	}
	marker := "00000000-0000-0000-0000-0000000eeeee"
	if err := insertMarker(ctx, s.source, marker); err != nil {
		return err
	}
	if err := waitMarker(ctx, s.cdc, marker); err != nil {
		return err
	}
	if err := proc.stop(); err != nil {
		return err
	}
	for rep := 0; rep < o.Reps; rep++ {
		res, err := rec.Window(ctx, 3*time.Minute, false)
		if err != nil {
			return err
		}
		if res.Repair.Repairs() != 0 {
			return fmt.Errorf("window run repaired %d rows on equal tables", res.Repair.Repairs())
		}
		r.Window = append(r.Window, res.Took)
		r.WindowChecked = res.Checked
	}
	fmt.Fprintf(o.Log, "bench: verify --full %v; window run over %d rows %v\n", round(r.VerifyFull), r.WindowChecked, round(r.Window))
	return nil
}
