package reconcile

import (
	"bytes"
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/myusta/cdc/internal/schema"
)

// A slice is compared by reading both sides in the same order, a row's
// position: its updated_at, then its key's text form compared byte by byte
// (COLLATE "C", alike on both servers). The two result streams are merged
// as they arrive, so memory holds two rows, not the slice, however many
// rows it has: one statement may have stamped a million rows alike, and
// such a group is one slice (see window.go).

// ordered is one side's rows of a slice, in position order, as the server
// sends them; its fields are the current row's and valid until next.
type ordered struct {
	rr   *pgconn.ResultReader
	side string
	nkey int
	idx  []int
	n    int64 // rows read
	err  error // set at the end of the rows

	ok   bool
	key  [][]byte // key columns, in the table's format
	hash int64
	at   int64  // updated_at as timestamptz, microseconds
	pos  []byte // the key's text form
}

// order starts reading the rows matching where (see sliceFilter) on pc in
// position order. The caller closes it.
func (s Side) order(ctx context.Context, pc *pgconn.PgConn, where string, args [][]byte) *ordered {
	at, key := s.position()
	// Aliased, so that ORDER BY's bare column name means the column.
	sql := fmt.Sprintf("SELECT %s, %s, (%s)::timestamptz AS cdc_position_at, %s AS cdc_position_key FROM %s WHERE %s ORDER BY %s, %s",
		s.keyList(), s.rowHash(), at, key, s.Table.Ident(), where, at, key)
	nkey := len(s.Table.Key)
	return &ordered{rr: pc.ExecParams(ctx, sql, args, nil, nil, s.formats(2, 1)), side: s.Name, nkey: nkey, idx: identity(nkey)}
}

// next moves to the next row; false at the end of the rows or on an
// error, which err then holds.
func (o *ordered) next() bool {
	if o.ok = o.rr.NextRow(); !o.ok {
		if _, err := o.rr.Close(); err != nil {
			o.err = fmt.Errorf("%s: read slice: %w", o.side, err)
		}
		return false
	}
	v := o.rr.Values()
	o.key = v[:o.nkey]
	o.hash = int64(binary.BigEndian.Uint64(v[o.nkey]))
	o.at = int64(binary.BigEndian.Uint64(v[o.nkey+1]))
	o.pos = v[o.nkey+2]
	o.n++
	return true
}

// keyBytes is the current row's key (see schema.AppendKey).
func (o *ordered) keyBytes() []byte { return schema.AppendKey(nil, o.key, o.idx) }

// close ends the statement (at once if its context was canceled) and
// returns its error, if any.
func (o *ordered) close() error {
	if o.err == nil {
		if _, err := o.rr.Close(); err != nil {
			o.err = fmt.Errorf("%s: read slice: %w", o.side, err)
		}
	}
	return o.err
}

// compare orders the current rows of a and b by position; a side at its
// end comes after every row.
func compare(a, b *ordered) int {
	switch {
	case !a.ok:
		return 1
	case !b.ok:
		return -1
	case a.at != b.at:
		return cmp.Compare(a.at, b.at)
	}
	return bytes.Compare(a.pos, b.pos)
}

// merge walks both sides in position order: a position only the source
// has is missing from chat, one only chat has is extra, one both have
// with another row hash is stale. A row whose updated_at differs between
// the sides is missing at one position and extra at the other; the repair
// reads each key once. It stops at the first error of either side.
func merge(src, chat *ordered) (d differences) {
	for (src.ok || chat.ok) && src.err == nil && chat.err == nil {
		switch c := compare(src, chat); {
		case c < 0:
			d.missing = append(d.missing, src.keyBytes())
			src.next()
		case c > 0:
			d.extra = append(d.extra, chat.keyBytes())
			chat.next()
		default:
			if src.hash != chat.hash {
				d.stale = append(d.stale, src.keyBytes())
			}
			src.next()
			chat.next()
		}
	}
	return d
}

// slice is one slice's comparison: what differs, the rows read on both
// sides, and how long the reads took, not counting the wait for the
// stream.
type slice struct {
	d       differences
	checked int64
	read    time.Duration
}

// compareSlice compares the rows matching where (the same predicate on
// both sides). The source's statement starts first and the stream is
// waited for before chat's starts, so chat holds at least what the
// source's snapshot does: changes in flight are not taken for drift.
func (r *Reconciler) compareSlice(ctx context.Context, sy *syncer, where string, args [][]byte) (slice, error) {
	var out slice
	began := time.Now()
	var waited time.Duration
	var chatErr error
	err := r.src.withSession(ctx, func(spc *pgconn.PgConn) error {
		qctx, cancel := context.WithCancel(ctx)
		defer cancel()
		src := r.src.order(qctx, spc, where, args)
		src.next() // the source has taken its snapshot
		start := time.Now()
		err := sy.wait(ctx)
		waited = time.Since(start)
		if err != nil {
			cancel()
			return errors.Join(err, src.close())
		}
		chatErr = r.chat.withSession(ctx, func(cpc *pgconn.PgConn) error {
			chat := r.chat.order(qctx, cpc, where, args)
			chat.next()
			out.d = merge(src, chat)
			out.checked = src.n + chat.n
			return chat.close()
		})
		if chatErr != nil {
			cancel() // the source's remaining rows are not wanted
		}
		return src.close()
	})
	out.read = time.Since(began) - waited
	if chatErr != nil {
		return out, chatErr
	}
	return out, err
}
