package reconcile

import (
	"bytes"
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// A window is compared a slice at a time: the source's next sliceRows rows
// in updated_at order (pacedSliceRows in a paced run), extended to the last
// of the rows sharing the slice's last updated_at, and chat's rows in the
// same updated_at range. The sides are merged as they stream (merge.go), so
// memory stays flat however many rows one statement stamped alike; a paced
// run rests between slices. A slice ends between two timestamps, never
// inside a group of rows stamped alike: paging inside one by key would make
// the server read the whole group again for every page (1M rows stamped by
// one UPDATE took ~100 paced pages of a full group read each, and lifted
// the stream's p99 at 3,000 changes/s from 12 to 460 ms; BENCHMARKS.md,
// session 12).
const (
	sliceRows      = 100_000
	pacedSliceRows = 10_000
)

// Window compares the rows updated within the last window (by the source
// database's clock) and repairs what differs, unless dryRun.
func (r *Reconciler) Window(ctx context.Context, window time.Duration, dryRun bool) (Result, error) {
	return r.window(ctx, window, dryRun, 0)
}

func (r *Reconciler) window(ctx context.Context, window time.Duration, dryRun bool, pace float64) (Result, error) {
	now, err := r.sourceNow(ctx)
	if err != nil {
		return Result{}, err
	}
	return r.compareRange(ctx, now.Add(-window), time.Time{}, dryRun, pace)
}

// Range compares the rows whose updated_at lies in [from, to] (to zero: no
// upper bound) and repairs what differs, unless dryRun.
func (r *Reconciler) Range(ctx context.Context, from, to time.Time, dryRun bool) (Result, error) {
	return r.compareRange(ctx, from, to, dryRun, 0)
}

func (r *Reconciler) sourceNow(ctx context.Context) (time.Time, error) {
	var now time.Time
	if err := r.src.Pool.QueryRow(ctx, "SELECT now()").Scan(&now); err != nil {
		return now, fmt.Errorf("read source clock: %w", err)
	}
	return now, nil
}

// compareRange compares [from, to] (to zero: no upper bound) a slice at a
// time (see compareSlice), then repairs what differs.
//
// A row that changes during the run may be in one slice on one side and a
// later one on the other; it is then a candidate that the second look in
// finish finds equal. Reading every row's hash measured as fast as
// key-hash buckets restricted to the window (TestPerf_WindowCompare): the
// row hashing dominates, not the transfer.
func (r *Reconciler) compareRange(ctx context.Context, from, to time.Time, dryRun bool, pace float64) (Result, error) {
	start := time.Now()
	res := Result{}
	if err := r.chooseHash(ctx); err != nil {
		return res, err
	}
	var d differences
	sy := r.newSyncer()
	target := sliceRows
	if pace > 0 {
		target = pacedSliceRows
	}
	if r.opts.sliceRows > 0 {
		target = r.opts.sliceRows
	}
	indexed, err := r.indexed(ctx)
	if err != nil {
		return res, err
	}
	var after []byte
	for {
		var through []byte // nil: this slice is the last
		if indexed {
			// Without an index on updated_at, finding each boundary
			// would scan the table: the window is read in one slice.
			filter, args := r.src.sliceFilter(from, to, after, nil)
			if through, err = r.src.boundary(ctx, filter, args, target); err != nil {
				return res, err
			}
		}
		filter, args := r.src.sliceFilter(from, to, after, through)
		s, err := r.compareSlice(ctx, sy, filter, args)
		if err != nil {
			return res, err
		}
		d.add(s.d.missing, s.d.stale, s.d.extra)
		res.Checked += s.checked
		res.Slices++
		if through == nil {
			break
		}
		after = through
		if pace > 0 {
			rest := time.Duration(float64(s.read) * pace)
			select {
			case <-ctx.Done():
				return res, ctx.Err()
			case <-time.After(rest):
			}
			res.Rested += rest
		}
	}
	return r.finish(ctx, res, d, start, dryRun, "window", "from", from.UTC().Format(time.RFC3339),
		"slices", res.Slices, "rested", res.Rested.Round(time.Millisecond).String())
}

// boundary returns the updated_at, as text, of the source's limit-th row
// matching filter in updated_at order: the last timestamp of the slice
// starting there. Nil when fewer rows match: the slice runs to the end.
func (s Side) boundary(ctx context.Context, filter string, args [][]byte, limit int) ([]byte, error) {
	at, _ := s.position()
	// Aliased, so that ORDER BY's bare column name means the column, not
	// this text output of it.
	sql := fmt.Sprintf("SELECT %s::text AS cdc_boundary FROM %s WHERE %s ORDER BY %s OFFSET %d LIMIT 1", at, s.Table.Ident(), filter, at, limit-1)
	var out []byte
	err := s.withSession(ctx, func(pc *pgconn.PgConn) error {
		rr := pc.ExecParams(ctx, sql, args, nil, nil, nil)
		for rr.NextRow() {
			out = bytes.Clone(rr.Values()[0])
		}
		_, err := rr.Close()
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("find the end of a slice: %w", err)
	}
	return out, nil
}

// indexed reports whether both sides have an index led by the updated_at
// column. Without one every slice would scan the whole table, so the window
// is then read in one slice.
func (r *Reconciler) indexed(ctx context.Context) (bool, error) {
	for _, s := range []Side{r.src, r.chat} {
		var ok bool
		err := s.Pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_index i
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
WHERE i.indrelid = $1::regclass AND a.attname = $2)`, s.Table.Ident(), s.Table.Columns[s.Table.UpdatedAt].Name).Scan(&ok)
		if err != nil {
			return false, fmt.Errorf("%s: look up an index on the updated_at column: %w", s.Name, err)
		}
		if !ok {
			return false, nil
		}
	}
	return true, nil
}

// sliceFilter is the SQL predicate, with its parameters, of a slice's
// rows: updated_at in [from, to] (to zero: no upper bound), after the
// timestamp after (nil: from from) and up to through, included (nil: to the
// end). The explicit bounds let the server use an index on updated_at.
// from and to are formatted here, never taken from input; after and
// through, read from the source, are parameters.
func (s Side) sliceFilter(from, to time.Time, after, through []byte) (string, [][]byte) {
	at, _ := s.position()
	f := fmt.Sprintf("%s >= %s", at, timestamp(from))
	if !to.IsZero() {
		f += fmt.Sprintf(" AND %s <= %s", at, timestamp(to))
	}
	var args [][]byte
	if after != nil {
		args = append(args, after)
		f += fmt.Sprintf(" AND %s > $%d::timestamptz", at, len(args))
	}
	if through != nil {
		args = append(args, through)
		f += fmt.Sprintf(" AND %s <= $%d::timestamptz", at, len(args))
	}
	return f, args
}

func timestamp(t time.Time) string {
	return "'" + t.UTC().Format(time.RFC3339Nano) + "'::timestamptz"
}
