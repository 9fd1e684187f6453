// Package keyed reads and describes rows of a synced table by key, the
// same way on either side: keys sent as one binary array per key column,
// the rows of a set of keys in the table's wire format (ReadRows,
// PoolFetch), keys parsed from their text form (notifications, dead
// letters) and rendered for people (FormatKey), and how a source row and
// a chat row differ (KindOf, Plan). The sink, the notify source and the
// reconciler all read rows through it.
package keyed

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/myusta/cdc/change"
	"github.com/myusta/cdc/internal/schema"
)

// Unnest returns "unnest($first, …) AS u(c0, …)" over the columns at cols,
// the select list that reads them as the columns' types, and the
// parameters' type OIDs.
func Unnest(t *schema.Table, cols []int, first int) (from string, sel []string, oids []uint32) {
	args := make([]string, len(cols))
	names := make([]string, len(cols))
	for i, col := range cols {
		c := t.Columns[col]
		names[i] = fmt.Sprintf("c%d", i)
		if t.Format == schema.Text {
			args[i] = fmt.Sprintf("$%d::text[]", first+i)
			sel = append(sel, fmt.Sprintf("u.c%d::%s", i, c.Cast))
			oids = append(oids, pgtype.TextArrayOID)
		} else {
			args[i] = fmt.Sprintf("$%d", first+i)
			sel = append(sel, "u."+names[i])
			oids = append(oids, c.Base.ArrayOID)
		}
	}
	return fmt.Sprintf("unnest(%s) AS u(%s)", strings.Join(args, ", "), strings.Join(names, ", ")), sel, oids
}

// KeyMatch is the condition that a row of t (columns qualified by alias,
// if any) has one of the keys passed as one array per key column from
// $first, and the parameters' type OIDs.
func KeyMatch(t *schema.Table, alias string, first int) (string, []uint32) {
	prefix := ""
	if alias != "" {
		prefix = alias + "."
	}
	if len(t.Key) == 1 {
		c := t.Columns[t.Key[0]]
		if t.Format == schema.Text {
			return fmt.Sprintf("%s%s = ANY($%d::text[]::%s[])", prefix, schema.Quote(c.Name), first, c.Cast), []uint32{pgtype.TextArrayOID}
		}
		return fmt.Sprintf("%s%s = ANY($%d)", prefix, schema.Quote(c.Name), first), []uint32{c.Base.ArrayOID}
	}
	from, sel, oids := Unnest(t, t.Key, first)
	cols := make([]string, len(t.Key))
	for i, name := range t.KeyNames() {
		cols[i] = prefix + schema.Quote(name)
	}
	return fmt.Sprintf("(%s) IN (SELECT %s FROM %s)", strings.Join(cols, ", "), strings.Join(sel, ", "), from), oids
}

// ElemOID is the element type of column col's array parameters.
func ElemOID(t *schema.Table, col int) uint32 {
	if t.Format == schema.Text {
		return pgtype.TextOID
	}
	return t.Columns[col].Base.OID
}

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
	params, err := KeyParams(t, keys)
	if err != nil {
		return nil, err
	}
	sql, oids := ReadRowsSQL(t)
	rr := pc.ExecParams(ctx, sql, params, oids, KeyFormats(len(params)), ResultFormats(t))
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

// ReadRowsSQL reads the rows of the keys in its parameters.
func ReadRowsSQL(t *schema.Table) (string, []uint32) {
	where, oids := KeyMatch(t, "", 1)
	exprs := make([]string, len(t.Columns))
	for i, c := range t.Columns {
		exprs[i] = c.Expr
	}
	return fmt.Sprintf("SELECT %s FROM %s WHERE %s", strings.Join(exprs, ", "), t.Ident(), where), oids
}

// ResultFormats asks for every column in t's format.
func ResultFormats(t *schema.Table) []int16 {
	f := make([]int16, len(t.Columns))
	for i := range f {
		f[i] = t.Format.Code()
	}
	return f
}

// KeyParams encodes keys as one binary array per key column, for KeyMatch.
func KeyParams(t *schema.Table, keys [][]byte) ([][]byte, error) {
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
		params[i] = AppendArray(nil, ElemOID(t, col), cols[i])
	}
	return params, nil
}

// KeyFormats is n binary parameter formats.
func KeyFormats(n int) []int16 {
	f := make([]int16, n)
	for i := range f {
		f[i] = 1
	}
	return f
}

// AppendArray appends a one-dimensional binary array of ElemOID values.
func AppendArray(buf []byte, ElemOID uint32, vals [][]byte) []byte {
	hasNull := uint32(0)
	for _, v := range vals {
		if v == nil {
			hasNull = 1
			break
		}
	}
	buf = binary.BigEndian.AppendUint32(buf, 1) // dimensions
	buf = binary.BigEndian.AppendUint32(buf, hasNull)
	buf = binary.BigEndian.AppendUint32(buf, ElemOID)
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

// TextArray renders a text[] literal.
func TextArray(ss []string) []byte {
	out := []byte{'{'}
	for i, s := range ss {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, '"')
		for j := 0; j < len(s); j++ {
			if s[j] == '"' || s[j] == '\\' {
				out = append(out, '\\')
			}
			out = append(out, s[j])
		}
		out = append(out, '"')
	}
	return append(out, '}')
}

// ParseKeys turns ids as text (a notification's id, sync_errors.user_id;
// see FormatKey) into keys of t as its format has them, converting on the
// server so that every key type works and each key takes the form the
// stream and the repairs compare. Ids that are not valid keys are returned
// in bad.
func ParseKeys(ctx context.Context, pc *pgconn.PgConn, t *schema.Table, ids []string) (keys [][]byte, bad []string, err error) {
	if len(ids) == 0 {
		return nil, nil, nil
	}
	cols := make([][]string, len(t.Key))
	var good []string
	for _, id := range ids {
		parts, err := schema.ParseKeyText(id, len(t.Key))
		if err != nil {
			bad = append(bad, id)
			continue
		}
		good = append(good, id)
		for i, p := range parts {
			cols[i] = append(cols[i], p)
		}
	}
	if len(good) == 0 {
		return nil, bad, nil
	}
	args, sel := make([]string, len(t.Key)), make([]string, len(t.Key))
	params := make([][]byte, len(t.Key))
	formats := make([]int16, len(t.Key))
	for i, k := range t.Key {
		args[i] = fmt.Sprintf("$%d::text[]", i+1)
		sel[i] = fmt.Sprintf("u.c%d::%s", i, t.Columns[k].Cast)
		params[i] = TextArray(cols[i])
		formats[i] = t.Format.Code()
	}
	names := make([]string, len(t.Key))
	for i := range names {
		names[i] = fmt.Sprintf("c%d", i)
	}
	sql := fmt.Sprintf("SELECT %s FROM unnest(%s) AS u(%s)", strings.Join(sel, ", "), strings.Join(args, ", "), strings.Join(names, ", "))
	rr := pc.ExecParams(ctx, sql, params, nil, nil, formats)
	for rr.NextRow() {
		vals := rr.Values()
		parts := make([][]byte, len(vals))
		for i, v := range vals {
			parts[i] = append([]byte(nil), v...)
		}
		keys = append(keys, schema.JoinKey(parts))
	}
	_, err = rr.Close()
	if err == nil || !RowRejected(err) {
		return keys, bad, err
	}
	if len(good) == 1 {
		return nil, append(bad, good...), nil
	}
	// One bad id spoils the conversion of all: take them one by one.
	keys = keys[:0]
	for _, id := range good {
		k, b, err := ParseKeys(ctx, pc, t, []string{id})
		if err != nil {
			return nil, nil, err
		}
		keys, bad = append(keys, k...), append(bad, b...)
	}
	return keys, bad, nil
}

// typeMap decodes binary values for people; pgtype.Map caches plans, so
// it is guarded for use from several goroutines.
var (
	typeMapMu sync.Mutex
	typeMap   = pgtype.NewMap()
)

// FormatValue renders the value v of column col of t for people: logs,
// sync_errors.user_id and payloads.
func FormatValue(t *schema.Table, col int, v []byte) string {
	if v == nil {
		return "NULL"
	}
	switch x := DecodeValue(t, col, v).(type) {
	case string:
		return x
	case [16]byte:
		return fmt.Sprintf("%x-%x-%x-%x-%x", x[0:4], x[4:6], x[6:8], x[8:10], x[10:16])
	case time.Time:
		return x.Format(time.RFC3339Nano)
	case []byte:
		return `\x` + hex.EncodeToString(x)
	default:
		return fmt.Sprint(x)
	}
}

// FormatKey renders a key of t (see schema.AppendKey) for people and for
// sync_errors.user_id: the value, or a JSON array of the values of a key
// of several columns.
func FormatKey(t *schema.Table, key []byte) string {
	parts, err := schema.SplitKey(key, len(t.Key))
	if err != nil {
		return `\x` + hex.EncodeToString(key)
	}
	texts := make([]string, len(parts))
	for i, p := range parts {
		texts[i] = FormatValue(t, t.Key[i], p)
	}
	return schema.KeyText(texts)
}

// DecodeValue turns a value into a Go value for people: text as it is,
// binary values of built-in types through pgtype; an enum's or a string
// type's binary form is its text; anything else stays bytes.
func DecodeValue(t *schema.Table, col int, v []byte) any {
	c := t.Columns[col]
	if t.Format == schema.Text || c.Base.Kind == 'e' || c.Base.Category == 'S' {
		return string(v)
	}
	typeMapMu.Lock()
	defer typeMapMu.Unlock()
	if c.Base.OID < firstUserOID {
		if typ, ok := typeMap.TypeForOID(c.Base.OID); ok {
			if x, err := typ.Codec.DecodeValue(typeMap, c.Base.OID, pgtype.BinaryFormatCode, v); err == nil {
				return x
			}
		}
	}
	return v
}

// firstUserOID is PostgreSQL's FirstNormalObjectId: below it, type OIDs
// are built in and the same on every cluster.
const firstUserOID = 16384

// RowRejected reports whether err is the chat database refusing a value
// (data exception or integrity violation) rather than a fault of the
// connection or of the schema as a whole.
func RowRejected(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || len(pgErr.Code) != 5 {
		return false
	}
	return pgErr.Code[:2] == "22" || pgErr.Code[:2] == "23" || pgErr.Code == "54000"
}
