package reconcile

import (
	"context"
	"fmt"
	"time"

	"github.com/myusta/cdc/internal/schema"
)

// A window is compared a slice of updated_at time at a time, each slice
// sized (from the rows the previous slice held) to hold about sliceRows
// rows per side, or pacedSliceRows in a paced run, which rests between
// short slices; memory stays flat however many rows changed (see
// compareSlice).
//
// Slices cost: each one's bitmap scan visits most of the heap pages its
// rows are spread over (1M rows, 360k compared, in a throw-away test: one
// slice 0.72–0.84 s, 18 slices 0.97–1.05 s, 3 slices 0.79–0.81 s), so
// unpaced slices are large.
const (
	sliceRows      = 100_000
	pacedSliceRows = 10_000
	firstSlices    = 8 // the first slice is this fraction of the range
	// rowsAtOnce bounds the rows a side whose hashes one slice holds,
	// about 5 MB a side; a larger slice is first read this far, then
	// compared by bucket sums.
	rowsAtOnce = 50_000
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
	return r.compareRange(ctx, now.Add(-window), time.Time{}, now, dryRun, pace)
}

// Range compares the rows whose updated_at lies in [from, to] (to zero: no
// upper bound) and repairs what differs, unless dryRun.
func (r *Reconciler) Range(ctx context.Context, from, to time.Time, dryRun bool) (Result, error) {
	end := to
	if end.IsZero() {
		var err error
		if end, err = r.sourceNow(ctx); err != nil {
			return Result{}, err
		}
	}
	return r.compareRange(ctx, from, to, end, dryRun, 0)
}

func (r *Reconciler) sourceNow(ctx context.Context) (time.Time, error) {
	var now time.Time
	if err := r.src.Pool.QueryRow(ctx, "SELECT now()").Scan(&now); err != nil {
		return now, fmt.Errorf("read source clock: %w", err)
	}
	return now, nil
}

// compareRange compares [from, to] (to zero: no upper bound) in slices of
// updated_at, the last of which starts before end and includes everything
// after it, then repairs what differs.
//
// Each slice is read from the source, then, after waiting for the stream,
// from chat (see compareSlice): reading the source first keeps changes in
// flight out of the comparison. A row that changes during the run may be
// in one slice on one side and a later one on the other; it is then a
// candidate that the second look in finish finds equal.
func (r *Reconciler) compareRange(ctx context.Context, from, to, end time.Time, dryRun bool, pace float64) (Result, error) {
	start := time.Now()
	res := Result{}
	if err := r.chooseHash(ctx); err != nil {
		return res, err
	}
	var d differences
	sy := r.newSyncer()
	width := max(end.Sub(from)/firstSlices, time.Second)
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
	for lo := from.Truncate(time.Microsecond); ; {
		hi := lo.Add(width).Truncate(time.Microsecond)
		last := !hi.Before(end) || !indexed
		filter := r.src.sliceFilter(lo, hi, last, to)
		began := time.Now()
		sd, srcRows, chatRows, waited, err := r.compareSlice(ctx, sy, filter)
		if err != nil {
			return res, err
		}
		read := time.Since(began) - waited
		d.add(sd.missing, sd.stale, sd.extra)
		res.fetched += sd.fetched
		res.Checked += srcRows + chatRows
		res.Slices++
		if last {
			break
		}
		lo, width = hi, nextWidth(width, int(max(srcRows, chatRows)), target)
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

// nextWidth sizes the next slice from the rows the last one held, growing
// by at most 4× at a time (2× after an empty slice, which tells little
// about what follows).
func nextWidth(width time.Duration, rows, target int) time.Duration {
	if rows == 0 {
		return width * 2
	}
	next := time.Duration(float64(width) * float64(target) / float64(rows))
	return max(min(next, width*4), width/4, time.Millisecond)
}

// compareSlice compares the rows matching filter and returns how long it
// waited for the stream. A slice of at most rowsAtOnce rows a side (every
// slice but one holding a group of rows one statement stamped alike, which
// no slice of time can split) is read row by row: the source, then, after
// waiting for the stream, chat, one scan each. A larger one is compared
// by bucket sums as the full compare compares the table (full.go): each
// side sums row hashes per key-hash bucket inside its database, the
// source's statement sent before the wait and chat's after it, and only
// rows of buckets that differ are read, a chunk at a time. Memory holds at
// most about rowsAtOnce rows' hashes a side either way.
func (r *Reconciler) compareSlice(ctx context.Context, sy *syncer, filter string) (d differences, srcRows, chatRows int64, waited time.Duration, err error) {
	wait := func(ctx context.Context) error {
		t := time.Now()
		defer func() { waited += time.Since(t) }()
		return sy.wait(ctx)
	}
	most := rowsAtOnce
	if r.opts.rowsAtOnce > 0 {
		most = r.opts.rowsAtOnce
	}
	// hashes reads "WHERE filter", so the limit follows it.
	limited := fmt.Sprintf("%s LIMIT %d", filter, most+1)
	src, err := r.src.hashes(ctx, limited)
	if err != nil {
		return d, 0, 0, waited, err
	}
	if len(src) <= most {
		if err := wait(ctx); err != nil {
			return d, 0, 0, waited, err
		}
		chat, err := r.chat.hashes(ctx, limited)
		if err != nil {
			return d, 0, 0, waited, err
		}
		if len(chat) <= most {
			d.add(diff(src, chat))
			d.fetched = int64(len(src) + len(chat))
			return d, int64(len(src)), int64(len(chat)), waited, nil
		}
	}
	d, srcRows, chatRows, err = bucketDiff(ctx, r.src, r.chat, filter, wait)
	return d, srcRows, chatRows, waited, err
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

// sliceFilter is the SQL predicate of a slice's rows: updated_at at or
// after lo and before hi; the last slice has no upper bound but to (at or
// before it) when to is not zero, so rows stamped a little in the future
// by a skewed clock are included. Times are formatted here, never taken
// from input.
func (s Side) sliceFilter(lo, hi time.Time, last bool, to time.Time) string {
	col := schema.Quote(s.Table.Columns[s.Table.UpdatedAt].Name)
	f := fmt.Sprintf("%s >= %s", col, timestamp(lo))
	switch {
	case !last:
		f += fmt.Sprintf(" AND %s < %s", col, timestamp(hi))
	case !to.IsZero():
		f += fmt.Sprintf(" AND %s <= %s", col, timestamp(to))
	}
	return f
}

func timestamp(t time.Time) string {
	return "'" + t.UTC().Format(time.RFC3339Nano) + "'::timestamptz"
}
