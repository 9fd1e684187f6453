package reconcile

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
	"golang.org/x/sync/errgroup"
)

// The full compare places every row in a bucket by the top bits of its key
// hash and compares, per bucket, the row count and the sum of row hashes,
// computed inside each database: equal tables cost one scan per side and a
// few kilobytes of transfer. Buckets that differ are split by the next bits
// until they are small enough to compare row by row.
const (
	bitsPerLevel = 12   // 4096 buckets per level
	maxDepth     = 5    // 60 bits of the key hash
	leafRows     = 1000 // buckets this small are compared row by row
	// chunkRows bounds the rows whose hashes are held at once when many
	// buckets differ (say, chat missed a tenth of the rows spread over
	// every bucket): the leaves are read in chunks of about this many rows,
	// so memory stays flat however much drifted.
	chunkRows = 20_000
)

// summary is a bucket's row count and hash sum.
type summary struct {
	count int64
	sum   string // numeric, as text
}

// buckets summarises the rows per bucket at depth, within the parent
// buckets (all rows at depth 1), of the rows matching filter (SQL, "" for
// all). The sum of 64-bit row hashes is exact: PostgreSQL accumulates
// sum(bigint) in 128 bits and returns numeric.
func (s Side) buckets(ctx context.Context, depth int, parents []int64, filter string) (map[int64]summary, error) {
	shift := 64 - bitsPerLevel*depth
	where, args := "", [][]byte(nil)
	if depth > 1 {
		where = fmt.Sprintf("WHERE kh >> %d = ANY($1::int8[])", shift+bitsPerLevel)
		args = [][]byte{int8Array(parents)}
	}
	inner := ""
	if filter != "" {
		inner = " WHERE " + filter
	}
	sql := fmt.Sprintf("SELECT kh >> %d, count(*), sum(rh)::text FROM (SELECT %s AS kh, %s AS rh FROM %s%s) r %s GROUP BY 1",
		shift, s.keyHash(), s.rowHash(), s.Table.Ident(), inner, where)
	out := map[int64]summary{}
	err := s.withSession(ctx, func(pc *pgconn.PgConn) error {
		rr := pc.ExecParams(ctx, sql, args, nil, nil, nil)
		for rr.NextRow() {
			v := rr.Values()
			b, err := strconv.ParseInt(string(v[0]), 10, 64)
			if err != nil {
				return err
			}
			n, err := strconv.ParseInt(string(v[1]), 10, 64)
			if err != nil {
				return err
			}
			out[b] = summary{count: n, sum: string(v[2])}
		}
		_, err := rr.Close()
		return err
	})
	return out, err
}

// leafHashes reads (key, row hash) of the rows in the given buckets that
// match filter.
func (s Side) leafHashes(ctx context.Context, depth int, leaves []int64, filter string) (rows, error) {
	where := fmt.Sprintf("%s >> %d = ANY($1::int8[])", s.keyHash(), 64-bitsPerLevel*depth)
	if filter != "" {
		where += " AND " + filter
	}
	return s.hashes(ctx, where, int8Array(leaves))
}

func int8Array(v []int64) []byte {
	parts := make([]string, len(v))
	for i, x := range v {
		parts[i] = strconv.FormatInt(x, 10)
	}
	return []byte("{" + strings.Join(parts, ",") + "}")
}

// bucketDiff compares the rows matching filter ("" for the whole table) on
// both sides and returns the keys that differ, and how many rows the two
// sides hold. Each level reads both sides at once; between, when not nil,
// runs after the source's first statement is sent and before chat's (the
// window waits there for the stream, so that chat holds what the source's
// snapshot does). Memory holds a level's bucket summaries and at most
// about chunkRows rows' hashes, however many rows match.
func bucketDiff(ctx context.Context, src, chat Side, filter string, between func(context.Context) error) (d differences, srcRows, chatRows int64, err error) {
	var parents []int64
	for depth := 1; depth <= maxDepth; depth++ {
		var sb, cb map[int64]summary
		g, gctx := errgroup.WithContext(ctx)
		g.Go(func() (err error) { sb, err = src.buckets(gctx, depth, parents, filter); return err })
		g.Go(func() (err error) {
			if depth == 1 && between != nil {
				if err := between(gctx); err != nil {
					return err
				}
			}
			cb, err = chat.buckets(gctx, depth, parents, filter)
			return err
		})
		if err := g.Wait(); err != nil {
			return d, 0, 0, err
		}
		if depth == 1 {
			for _, b := range sb {
				srcRows += b.count
			}
			for _, b := range cb {
				chatRows += b.count
			}
		}
		var deeper, leaves []int64
		size := map[int64]int64{}
		seen := map[int64]bool{}
		for _, m := range []map[int64]summary{sb, cb} {
			for b := range m {
				if seen[b] {
					continue
				}
				seen[b] = true
				if sb[b] == cb[b] {
					continue
				}
				if n := max(sb[b].count, cb[b].count); n <= leafRows || depth == maxDepth {
					leaves = append(leaves, b)
					size[b] = n
				} else {
					deeper = append(deeper, b)
				}
			}
		}
		for _, chunk := range chunks(leaves, size, chunkRows) {
			var sr, cr rows
			g, gctx := errgroup.WithContext(ctx)
			g.Go(func() (err error) { sr, err = src.leafHashes(gctx, depth, chunk, filter); return err })
			g.Go(func() (err error) { cr, err = chat.leafHashes(gctx, depth, chunk, filter); return err })
			if err := g.Wait(); err != nil {
				return d, 0, 0, err
			}
			d.add(diff(sr, cr))
			d.fetched += int64(len(sr) + len(cr))
		}
		if len(deeper) == 0 {
			break
		}
		parents = deeper
	}
	return d, srcRows, chatRows, nil
}

// chunks splits buckets into groups of about limit rows (a bucket larger
// than limit forms a group of its own).
func chunks(buckets []int64, size map[int64]int64, limit int64) [][]int64 {
	var out [][]int64
	var cur []int64
	var n int64
	for _, b := range buckets {
		if len(cur) > 0 && n+size[b] > limit {
			out = append(out, cur)
			cur, n = nil, 0
		}
		cur = append(cur, b)
		n += size[b]
	}
	if len(cur) > 0 {
		out = append(out, cur)
	}
	return out
}

// differences are the keys (binary) found to differ, by kind.
type differences struct {
	missing, stale, extra [][]byte
	fetched               int64 // rows whose hashes were read to find them
}

func (d *differences) add(missing, stale, extra [][]byte) {
	d.missing = append(d.missing, missing...)
	d.stale = append(d.stale, stale...)
	d.extra = append(d.extra, extra...)
}

// keys returns each differing key once: a row that moved in updated_at
// between the two reads of a window is missing from one slice and extra in
// another.
func (d differences) keys() [][]byte {
	out := make([][]byte, 0, len(d.missing)+len(d.stale)+len(d.extra))
	seen := make(map[string]bool, cap(out))
	for _, set := range [][][]byte{d.missing, d.stale, d.extra} {
		for _, k := range set {
			if !seen[string(k)] {
				seen[string(k)] = true
				out = append(out, k)
			}
		}
	}
	return out
}

func (d differences) empty() bool { return len(d.missing)+len(d.stale)+len(d.extra) == 0 }
