package reconcile

import (
	"bytes"
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// A window is compared as the full compare compares the table (full.go):
// each side sums row hashes per key-hash bucket inside its database, and
// only rows of buckets that differ are read, a chunk at a time, so memory
// stays flat however many rows changed, even when one statement stamped a
// million of them alike. A paced run (cdc run's scheduled one) reads the
// window in slices of about pacedSliceRows rows in updated_at order and
// rests between them; a slice ends between two timestamps, never inside a
// group of rows stamped alike, which only a scan of the whole group could
// split (paging such a group by key re-read it per page: a 1M-row UPDATE's
// window took 4 min 25 s paced; BENCHMARKS.md, session 12). Other runs read
// the window in one slice.
const pacedSliceRows = 10_000

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

// compareRange compares [from, to] (to zero: no upper bound), paced runs a
// slice at a time, then repairs what differs.
//
// Each slice's source statement is sent first and chat's after waiting
// for the stream, so chat holds what the source's snapshot does: changes
// in flight are not taken for drift. A row that changes during the run may
// be in one slice on one side and a later one on the other; it is then a
// candidate that the second look in finish finds equal.
func (r *Reconciler) compareRange(ctx context.Context, from, to time.Time, dryRun bool, pace float64) (Result, error) {
	start := time.Now()
	res := Result{}
	if err := r.chooseHash(ctx); err != nil {
		return res, err
	}
	target := 0 // rows a slice: 0 for the whole range in one
	if pace > 0 {
		target = pacedSliceRows
	}
	if r.opts.sliceRows > 0 {
		target = r.opts.sliceRows
	}
	if target > 0 {
		// Without an index on updated_at, finding each slice's end would
		// scan the table: the range is read in one slice.
		indexed, err := r.indexed(ctx)
		if err != nil {
			return res, err
		}
		if !indexed {
			target = 0
		}
	}
	var d differences
	sy := r.newSyncer()
	var after []byte
	for {
		var through []byte // nil: this slice is the last
		if target > 0 {
			var err error
			if through, err = r.src.boundary(ctx, from, to, after, target); err != nil {
				return res, err
			}
		}
		filter, err := r.src.sliceFilter(from, to, after, through)
		if err != nil {
			return res, err
		}
		began := time.Now()
		var waited time.Duration
		sd, srcRows, chatRows, err := bucketDiff(ctx, r.src, r.chat, filter, func(ctx context.Context) error {
			t := time.Now()
			defer func() { waited = time.Since(t) }()
			return sy.wait(ctx)
		})
		if err != nil {
			return res, err
		}
		read := time.Since(began) - waited
		d.add(sd.missing, sd.stale, sd.extra)
		res.fetched += sd.fetched
		res.Checked += srcRows + chatRows
		res.Slices++
		if through == nil {
			break
		}
		after = through
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
// column.
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

// boundary returns the updated_at, as text, of the source's limit-th row in
// updated_at order after after (nil: from from) within [from, to]: the
// last timestamp of the slice starting there. Nil when fewer rows follow:
// the slice runs to the end.
func (s Side) boundary(ctx context.Context, from, to time.Time, after []byte, limit int) ([]byte, error) {
	filter, err := s.sliceFilter(from, to, after, nil)
	if err != nil {
		return nil, err
	}
	at := s.updatedAt()
	// Aliased, so that ORDER BY's bare column name means the column, not
	// this text output of it.
	sql := fmt.Sprintf("SELECT %s::text AS cdc_boundary FROM %s WHERE %s ORDER BY %s OFFSET %d LIMIT 1", at, s.Table.Ident(), filter, at, limit-1)
	var out []byte
	err = s.withSession(ctx, func(pc *pgconn.PgConn) error {
		rr := pc.ExecParams(ctx, sql, nil, nil, nil, nil)
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

// sliceFilter is the SQL predicate of a slice's rows: updated_at in [from,
// to] (to zero: no upper bound), after the timestamp after (nil: from
// from) and up to through, included (nil: to the end). The explicit bounds
// let the server use an index on updated_at. from and to are formatted
// here; after and through, the source's text of a timestamp, are checked
// to be only that before they are quoted.
func (s Side) sliceFilter(from, to time.Time, after, through []byte) (string, error) {
	at := s.updatedAt()
	f := fmt.Sprintf("%s >= %s", at, timestamp(from))
	if !to.IsZero() {
		f += fmt.Sprintf(" AND %s <= %s", at, timestamp(to))
	}
	for _, b := range []struct {
		op string
		v  []byte
	}{{">", after}, {"<=", through}} {
		if b.v == nil {
			continue
		}
		lit, err := timestampText(b.v)
		if err != nil {
			return "", err
		}
		f += fmt.Sprintf(" AND %s %s %s", at, b.op, lit)
	}
	return f, nil
}

func timestamp(t time.Time) string {
	return "'" + t.UTC().Format(time.RFC3339Nano) + "'::timestamptz"
}

// timestampText quotes a timestamp's text as the server wrote it (ISO
// style: digits, '-', ':', '.', '+', spaces, and words such as infinity
// or BC) as a timestamptz literal, refusing any other character.
func timestampText(v []byte) (string, error) {
	for _, c := range v {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || bytes.IndexByte([]byte("-:.+ "), c) >= 0) {
			return "", fmt.Errorf("unexpected updated_at text %q from the source", v)
		}
	}
	return "'" + string(v) + "'::timestamptz", nil
}
