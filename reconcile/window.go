package reconcile

import (
	"context"
	"fmt"
	"time"
)

// A window is compared a slice at a time: the next sliceRows rows of the
// source in (updated_at, key) order (pacedSliceRows in a paced run), and
// chat's rows between the same two positions. Memory stays flat however
// many rows changed, even when one statement stamped them all with the
// same updated_at; a paced run rests between short slices. Slices cost:
// the source's is an index scan in updated_at order (random heap pages)
// with a sort of equal timestamps by key; a window of 1M changed rows took
// 2.6 s in 10 slices against 2.3 s read whole (and 196 MB), so unpaced
// slices are large (BENCHMARKS.md, session 11).
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

// compareRange compares [from, to] (to zero: no upper bound) in slices of
// the source's rows in (updated_at, key) order, then repairs what differs.
//
// Each slice's (key, row hash) pairs are read from the source, then, after
// waiting for the stream, from chat between the same positions: reading
// the source first keeps changes in flight out of the comparison. A row
// that changes during the run may be in one slice on one side and a later
// one on the other; it is then a candidate that the second look in finish
// finds equal. Reading every row's hash measured as fast as key-hash
// buckets restricted to the window (TestPerf_WindowCompare): the row
// hashing dominates, not the transfer.
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
	var after *position
	for {
		began := time.Now()
		var src rows
		var next *position // nil: this slice is the last
		filter, args := r.src.sliceFilter(from, to, after, nil)
		if indexed {
			src, next, err = r.src.page(ctx, filter, target, args...)
		} else {
			// Without an index on updated_at each slice would scan the
			// whole table: the window is read in one.
			src, err = r.src.hashes(ctx, filter, args...)
		}
		if err != nil {
			return res, err
		}
		read := time.Since(began)
		if err := sy.wait(ctx); err != nil {
			return res, err
		}
		began = time.Now()
		filter, args = r.chat.sliceFilter(from, to, after, next)
		chat, err := r.chat.hashes(ctx, filter, args...)
		if err != nil {
			return res, err
		}
		read += time.Since(began)
		d.add(diff(src, chat))
		res.Checked += int64(len(src) + len(chat))
		res.Slices++
		if next == nil {
			break
		}
		after = next
		if pace > 0 {
			rest := time.Duration(float64(read) * pace)
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
// rows: updated_at in [from, to] (to zero: no upper bound), after position
// after (nil: from from) and up to position through, included (nil: to
// the end). The explicit updated_at bounds let the server use an index on
// it. from and to are formatted here, never taken from input; positions
// are parameters.
func (s Side) sliceFilter(from, to time.Time, after, through *position) (string, [][]byte) {
	at, key := s.order()
	f := fmt.Sprintf("%s >= %s", at, timestamp(from))
	if !to.IsZero() {
		f += fmt.Sprintf(" AND %s <= %s", at, timestamp(to))
	}
	var args [][]byte
	if after != nil {
		args = append(args, after.at, after.key)
		f += fmt.Sprintf(" AND %s >= $1::timestamptz AND (%s, %s) > ($1::timestamptz, $2::text)", at, at, key)
	}
	if through != nil {
		n := len(args)
		args = append(args, through.at, through.key)
		f += fmt.Sprintf(" AND %s <= $%d::timestamptz AND (%s, %s) <= ($%d::timestamptz, $%d::text)", at, n+1, at, key, n+1, n+2)
	}
	return f, args
}

func timestamp(t time.Time) string {
	return "'" + t.UTC().Format(time.RFC3339Nano) + "'::timestamptz"
}
