package sink

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/myusta/cdc/change"
	"github.com/myusta/cdc/internal/retry"
	"github.com/myusta/cdc/internal/schema"
)

// PoolFetch is the Fetch of table t read through pool (the source).
func PoolFetch(pool *pgxpool.Pool, t *schema.Table) change.Fetch {
	return func(ctx context.Context, keys [][]byte) (map[string][][]byte, error) {
		conn, err := pool.Acquire(ctx)
		if err != nil {
			return nil, err
		}
		defer conn.Release()
		return ReadRows(ctx, conn.Conn().PgConn(), t, keys)
	}
}

// Repair makes the chat rows of keys equal to the source rows that fetch
// reads. In one chat transaction it takes the writer lock, then calls fetch,
// so the source state it writes is newer than anything any writer (the
// stream, another repair, another cdc process) has committed: a repair never
// replaces a newer version and never brings back a deleted row. Changes the
// stream applies afterwards are newer still.
func (s *Sink) Repair(ctx context.Context, keys [][]byte, fetch change.Fetch) (change.RepairResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.waitIdle(ctx); err != nil {
		return change.RepairResult{}, err
	}
	var res change.RepairResult
	err := retry.Do(ctx, s.opts.Retry, s.log, "repair rows", s.counted(func(ctx context.Context) error {
		res = change.RepairResult{}
		s.begin()
		conn, err := s.writer(ctx)
		if err != nil {
			return err
		}
		pc := conn.Conn().PgConn()
		if err := s.repair(ctx, pc, keys, fetch, &res); err != nil {
			if !pc.IsClosed() && pc.TxStatus() != 'I' {
				_ = execSimple(context.WithoutCancel(ctx), pc, "ROLLBACK")
			}
			s.dropBroken()
			return err
		}
		return nil
	}))
	if err != nil {
		return res, fmt.Errorf("repair: %w", err)
	}
	s.committed()
	s.Stats.DeadLetters.Add(int64(res.Dead))
	return res, nil
}

func (s *Sink) repair(ctx context.Context, pc *pgconn.PgConn, keys [][]byte, fetch change.Fetch, res *change.RepairResult) error {
	if err := s.beginLocked(ctx, pc); err != nil {
		return err
	}
	// Shows in pg_stat_activity, and lets a trigger tell repairs apart.
	if err := execSimple(ctx, pc, "SET LOCAL application_name = 'cdc-repair'"); err != nil {
		return err
	}
	src, err := fetch(ctx, keys)
	if err != nil {
		return fmt.Errorf("read source rows: %w", err)
	}
	chat, err := ReadRows(ctx, pc, s.table, keys)
	if err != nil {
		return fmt.Errorf("read chat rows: %w", err)
	}
	counts, b := Plan(s.table, keys, src, chat)
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
		chat, err := ReadRows(ctx, pc, s.table, extra)
		if err != nil {
			return nil, fmt.Errorf("read chat rows: %w", err)
		}
		c, eb := Plan(s.table, extra, src, chat)
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
	if err := execResolve(ctx, pc, r); err != nil {
		return err
	}
	return execSimple(ctx, pc, "COMMIT")
}

// Kinds of difference between a source and a chat row.
const (
	KindMissing = "missing" // in the source, not in chat
	KindStale   = "stale"   // in both, different
	KindExtra   = "extra"   // in chat, not in the source
)

// KindOf tells how key's chat row differs from its source row ("" when
// they are equal or both absent), given rows as ReadRows returns them.
func KindOf(key []byte, src, chat map[string][][]byte) string {
	sv, inSrc := src[string(key)]
	cv, inChat := chat[string(key)]
	switch {
	case inSrc && !inChat:
		return KindMissing
	case inSrc && !equalRows(sv, cv):
		return KindStale
	case !inSrc && inChat:
		return KindExtra
	}
	return ""
}

// Plan compares the source and chat rows of keys (as ReadRows returns
// them) and returns what differs, by kind, and the changes that make chat
// equal to the source.
func Plan(t *schema.Table, keys [][]byte, src, chat map[string][][]byte) (change.RepairResult, *change.Batch) {
	var res change.RepairResult
	b := change.NewBatch(len(t.Columns), t.Key)
	for _, k := range keys {
		switch KindOf(k, src, chat) {
		case KindMissing:
			res.Missing++
		case KindStale:
			res.Stale++
		case KindExtra:
			res.Extra++
			parts, err := schema.SplitKey(k, len(t.Key))
			if err != nil {
				continue // not a key of t: nothing to delete
			}
			v := b.NewValues()
			for i, p := range parts {
				v[t.Key[i]] = b.Copy(p)
			}
			b.Add(change.Change{Op: change.OpDelete, Values: v})
			continue
		default:
			res.Same++
			continue
		}
		b.Add(change.Change{Op: change.OpUpsert, Values: src[string(k)]})
	}
	return res, b
}

func equalRows(a, b [][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if (a[i] == nil) != (b[i] == nil) || !bytes.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}

// ReadRows reads the synced columns of t for keys, in t's format, keyed
// by key (see schema.AppendKey). It is how both sides of a repair are read:
// each column through its comparison expression, so that values of types
// that differ between the sides compare as chat would store them.
func ReadRows(ctx context.Context, pc *pgconn.PgConn, t *schema.Table, keys [][]byte) (map[string][][]byte, error) {
	out := make(map[string][][]byte, len(keys))
	if len(keys) == 0 {
		return out, nil
	}
	params, err := keyParams(t, keys)
	if err != nil {
		return nil, err
	}
	sql, oids := readRowsSQL(t)
	rr := pc.ExecParams(ctx, sql, params, oids, keyFormats(len(params)), resultFormats(t))
	for rr.NextRow() {
		vals := rr.Values()
		row := make([][]byte, len(vals))
		for i, v := range vals {
			if v != nil {
				row[i] = append([]byte{}, v...)
			}
		}
		out[string(t.KeyOf(row))] = row
	}
	if _, err := rr.Close(); err != nil {
		return nil, err
	}
	return out, nil
}

// readRowsSQL reads the rows of the keys in its parameters.
func readRowsSQL(t *schema.Table) (string, []uint32) {
	where, oids := keyMatch(t, "", 1)
	exprs := make([]string, len(t.Columns))
	for i, c := range t.Columns {
		exprs[i] = c.Expr
	}
	return fmt.Sprintf("SELECT %s FROM %s WHERE %s", strings.Join(exprs, ", "), t.Ident(), where), oids
}

// resultFormats asks for every column in t's format.
func resultFormats(t *schema.Table) []int16 {
	f := make([]int16, len(t.Columns))
	for i := range f {
		f[i] = t.Format.Code()
	}
	return f
}

// keyParams encodes keys as one binary array per key column, for keyMatch.
func keyParams(t *schema.Table, keys [][]byte) ([][]byte, error) {
	cols := make([][][]byte, len(t.Key))
	for _, k := range keys {
		parts, err := schema.SplitKey(k, len(t.Key))
		if err != nil {
			return nil, err
		}
		for i, p := range parts {
			cols[i] = append(cols[i], p)
		}
	}
	params := make([][]byte, len(t.Key))
	for i, col := range t.Key {
		params[i] = appendArray(nil, elemOID(t, col), cols[i])
	}
	return params, nil
}

// keyFormats is n binary parameter formats.
func keyFormats(n int) []int16 {
	f := make([]int16, n)
	for i := range f {
		f[i] = 1
	}
	return f
}

// appendArray appends a one-dimensional binary array of elemOID values.
func appendArray(buf []byte, elemOID uint32, vals [][]byte) []byte {
	hasNull := uint32(0)
	for _, v := range vals {
		if v == nil {
			hasNull = 1
			break
		}
	}
	buf = binary.BigEndian.AppendUint32(buf, 1) // dimensions
	buf = binary.BigEndian.AppendUint32(buf, hasNull)
	buf = binary.BigEndian.AppendUint32(buf, elemOID)
	buf = binary.BigEndian.AppendUint32(buf, uint32(len(vals)))
	buf = binary.BigEndian.AppendUint32(buf, 1) // lower bound
	for _, v := range vals {
		if v == nil {
			buf = binary.BigEndian.AppendUint32(buf, 0xFFFFFFFF)
			continue
		}
		buf = binary.BigEndian.AppendUint32(buf, uint32(len(v)))
		buf = append(buf, v...)
	}
	return buf
}
