package sink

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/myusta/cdc/change"
	"github.com/myusta/cdc/internal/keyed"
	"github.com/myusta/cdc/internal/schema"
)

// Repairs have no source order to follow: they write the current source
// rows of keys that differ. Chat's unique constraints can still refuse
// them all at once, and even one at a time, when the rows trade values: a
// swap of two users' emails (each row needs the other's value), a
// rotation of three. applyRepairs finds an order that passes, and parks
// the values that block a cycle.

// applyRepairs writes changes in the open transaction, each change on its
// own when the set as a whole is refused: passes over the refused changes
// continue while each pass writes some (a chain that frees values for the
// next). For changes still refused by a unique or exclusion constraint it
// then brings in the chat rows that hold their values (more: their own
// repairs, which move the values away; a swap's other half that the repair
// did not include, say), and after that parks the unique values of the
// rows in the way (NULL, or a unique placeholder for a text column that
// may not be NULL) and tries once more. What is refused after that is a
// dead letter.
func (s *Sink) applyRepairs(ctx context.Context, pc *pgconn.PgConn, changes []change.Change, more func([]change.Change) ([]change.Change, error)) (dead int, err error) {
	if len(changes) == 0 {
		return 0, nil
	}
	if err := execSimple(ctx, pc, "SAVEPOINT cdc_repair"); err != nil {
		return 0, err
	}
	var batch pgconn.Batch
	dels, ups, _ := split(changes)
	s.queueChanges(&batch, changes, dels, ups)
	_, err = pc.ExecBatch(ctx, &batch).ReadAll()
	if err == nil {
		return 0, execSimple(ctx, pc, "RELEASE SAVEPOINT cdc_repair")
	}
	if !keyed.RowRejected(err) {
		return 0, err
	}
	if err := execSimple(ctx, pc, "ROLLBACK TO SAVEPOINT cdc_repair; RELEASE SAVEPOINT cdc_repair"); err != nil {
		return 0, err
	}
	pending := all(len(changes))
	var refused map[int]error
	for expanded, parked := false, false; ; {
		var progress bool
		if pending, refused, progress, err = s.onePass(ctx, pc, changes, pending); err != nil {
			return 0, err
		}
		switch {
		case len(pending) == 0:
			return 0, nil
		case progress:
			continue
		case !expanded && more != nil:
			expanded = true
			extra, err := more(blocked(changes, pending, refused))
			if err != nil {
				return 0, err
			}
			for i := range extra {
				pending = append(pending, len(changes)+i)
			}
			changes = append(changes, extra...)
			continue
		case !parked && s.park(ctx, pc, changes, pending, refused):
			parked = true
			continue
		}
		break
	}
	for _, i := range pending {
		if err := s.deadLetter(ctx, pc, &changes[i], refused[i]); err != nil {
			return 0, err
		}
	}
	return len(pending), nil
}

// blocked returns the upserts at idx that a unique or exclusion
// constraint refused.
func blocked(changes []change.Change, idx []int, why map[int]error) []change.Change {
	var out []change.Change
	for _, i := range idx {
		var pgErr *pgconn.PgError
		if changes[i].Op == change.OpUpsert && errors.As(why[i], &pgErr) && (pgErr.Code == "23505" || pgErr.Code == "23P01") {
			out = append(out, changes[i])
		}
	}
	return out
}

// blockingKeys returns the keys of the chat rows, other than the rows of
// changes, that hold a value of a unique column the upserts in changes
// would write (compared case-insensitively too for text, as an index on
// lower(col) would): the rows in their way.
func (s *Sink) blockingKeys(ctx context.Context, pc *pgconn.PgConn, changes []change.Change) ([][]byte, error) {
	cols, err := s.uniqueColumns(ctx, pc)
	if err != nil || len(cols) == 0 || len(changes) == 0 {
		return nil, err
	}
	t := s.table
	var conds []string
	var params [][]byte
	var oids []uint32
	for _, c := range cols {
		vals := make([][]byte, 0, len(changes))
		for i := range changes {
			if v := changes[i].Values[c.index]; v != nil {
				vals = append(vals, v)
			}
		}
		if len(vals) == 0 {
			continue
		}
		params = append(params, keyed.AppendArray(nil, keyed.ElemOID(t, c.index), vals))
		col := t.Columns[c.index]
		arg := fmt.Sprintf("$%d", len(params))
		oid := col.Base.ArrayOID
		if t.Format == schema.Text {
			arg += "::text[]::" + col.Cast + "[]"
			oid = pgtype.TextArrayOID
		}
		oids = append(oids, oid)
		cond := fmt.Sprintf("%s = ANY(%s)", schema.Quote(col.Name), arg)
		if c.text {
			cond = fmt.Sprintf("(%s OR lower(%s::text) = ANY(SELECT lower(x::text) FROM unnest(%s) x))", cond, schema.Quote(col.Name), arg)
		}
		conds = append(conds, cond)
	}
	if len(conds) == 0 {
		return nil, nil
	}
	keys := make([]string, len(t.Key))
	for i, k := range t.Key {
		keys[i] = t.Columns[k].Expr
	}
	formats := make([]int16, len(t.Key))
	for i := range formats {
		formats[i] = t.Format.Code()
	}
	mine := map[string]bool{}
	for i := range changes {
		mine[string(t.KeyOf(changes[i].Values))] = true
	}
	rr := pc.ExecParams(ctx, fmt.Sprintf("SELECT %s FROM %s WHERE %s", strings.Join(keys, ", "), t.Ident(), strings.Join(conds, " OR ")),
		params, oids, keyed.KeyFormats(len(params)), formats)
	var out [][]byte
	for rr.NextRow() {
		parts := make([][]byte, len(t.Key))
		for i, v := range rr.Values() {
			parts[i] = append([]byte(nil), v...)
		}
		if k := schema.JoinKey(parts); !mine[string(k)] {
			out = append(out, k)
		}
	}
	_, err = rr.Close()
	return out, err
}

// onePass writes each change at idx on its own, under a savepoint, and
// returns those chat refused, with why, and whether any was written.
func (s *Sink) onePass(ctx context.Context, pc *pgconn.PgConn, changes []change.Change, idx []int) (left []int, why map[int]error, progress bool, err error) {
	why = map[int]error{}
	for from := 0; from < len(idx); {
		to := min(from+replayChunk, len(idx))
		var batch pgconn.Batch
		for _, i := range idx[from:to] {
			batch.ExecParams("SAVEPOINT cdc_row", nil, nil, nil, nil)
			s.queueOne(&batch, &changes[i])
			batch.ExecParams("RELEASE SAVEPOINT cdc_row", nil, nil, nil, nil)
		}
		results, err := pc.ExecBatch(ctx, &batch).ReadAll()
		done := len(results) / 3
		progress = progress || done > 0
		if err == nil {
			from = to
			continue
		}
		failed := from + done
		if !keyed.RowRejected(err) || len(results)%3 != 1 || failed >= to {
			if keyed.RowRejected(err) {
				return nil, nil, false, fmt.Errorf("%w: %w", errReplay, err)
			}
			return nil, nil, false, err
		}
		if rerr := execSimple(ctx, pc, "ROLLBACK TO SAVEPOINT cdc_row; RELEASE SAVEPOINT cdc_row"); rerr != nil {
			return nil, nil, false, rerr
		}
		left = append(left, idx[failed])
		why[idx[failed]] = err
		from = failed + 1
	}
	return left, why, progress, nil
}

// park moves the values of chat's unique columns (other than the key) out
// of the way in the chat rows of the upserts at idx that a unique or
// exclusion constraint refused, so that the rows can take their new
// values. It reports whether it parked anything.
func (s *Sink) park(ctx context.Context, pc *pgconn.PgConn, changes []change.Change, idx []int, why map[int]error) bool {
	var keys [][]byte
	for _, c := range blocked(changes, idx, why) {
		keys = append(keys, s.table.KeyOf(c.Values))
	}
	if len(keys) == 0 {
		return false
	}
	cols, err := s.uniqueColumns(ctx, pc)
	if err != nil {
		return false
	}
	var set []string
	for _, c := range cols {
		name := schema.Quote(s.table.Columns[c.index].Name)
		switch {
		case !c.notNull:
			set = append(set, name+" = NULL")
		case c.text:
			set = append(set, name+" = 'cdc-parked-' || gen_random_uuid()")
		}
	}
	if len(set) == 0 {
		return false
	}
	params, err := keyed.KeyParams(s.table, keys)
	if err != nil {
		return false
	}
	where, oids := keyed.KeyMatch(s.table, "", 1)
	sql := fmt.Sprintf("UPDATE %s SET %s WHERE %s", s.table.Ident(), strings.Join(set, ", "), where)
	if err := execSimple(ctx, pc, "SAVEPOINT cdc_park"); err != nil {
		return false
	}
	if _, err := pc.ExecParams(ctx, sql, params, oids, keyed.KeyFormats(len(params)), nil).Close(); err != nil {
		_ = execSimple(ctx, pc, "ROLLBACK TO SAVEPOINT cdc_park; RELEASE SAVEPOINT cdc_park")
		s.log.Warn("could not park the values blocking a repair", "err", err)
		return false
	}
	s.log.Info("parked the unique values of chat rows that trade them, to repair them", "rows", len(keys))
	return execSimple(ctx, pc, "RELEASE SAVEPOINT cdc_park") == nil
}

// uniqueColumn is a synced non-key column of one of chat's unique indexes
// or exclusion constraints.
type uniqueColumn struct {
	index         int // in the table's Columns
	notNull, text bool
}

// uniqueColumns reads from chat's catalog the synced non-key columns of
// its unique indexes and exclusion constraints, the columns of expression
// indexes included.
func (s *Sink) uniqueColumns(ctx context.Context, pc *pgconn.PgConn) ([]uniqueColumn, error) {
	rr := pc.ExecParams(ctx, `SELECT DISTINCT a.attname, a.attnotnull, t.typcategory = 'S'
FROM pg_index i
JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = i.indexrelid AND d.refclassid = 'pg_class'::regclass
  AND d.refobjid = i.indrelid AND d.refobjsubid > 0
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = d.refobjsubid
JOIN pg_type t ON t.oid = a.atttypid
WHERE i.indrelid = $1::regclass AND (i.indisunique OR i.indisexclusion) AND NOT i.indisprimary`,
		[][]byte{[]byte(s.table.Ident())}, nil, nil, nil)
	var out []uniqueColumn
	for rr.NextRow() {
		v := rr.Values()
		i := s.table.Index(string(v[0]))
		if i < 0 || s.table.IsKey(i) {
			continue
		}
		out = append(out, uniqueColumn{index: i, notNull: string(v[1]) == "t", text: string(v[2]) == "t"})
	}
	_, err := rr.Close()
	return out, err
}
