package sink

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/myusta/cdc/change"
	"github.com/myusta/cdc/internal/keyed"
	"github.com/myusta/cdc/internal/schema"
)

// snapshotTable stages a first copy that is merged into a chat table. Its
// rows are numbered in arrival order, so that a range of them can be
// written apart from the rest when chat refuses one.
const snapshotTable = "cdc_snapshot"

// merge copies every part into the staging table and makes the chat table
// equal to it, in the open transaction: changed and new rows are upserted,
// rows the copy does not have are deleted. Rows chat refuses are isolated
// and recorded in sync_errors. It returns the rows copied.
func (s *Sink) merge(ctx context.Context, pc *pgconn.PgConn, copyOuts []change.CopyOut) (rows int64, err error) {
	t := s.table
	if err := execSimple(ctx, pc, fmt.Sprintf("CREATE TEMP TABLE %s (cdc_n bigint GENERATED ALWAYS AS IDENTITY, %s) ON COMMIT DROP",
		snapshotTable, stageColumns(t))); err != nil {
		return 0, fmt.Errorf("create staging table: %w", err)
	}
	copySQL := fmt.Sprintf("COPY %s (%s) FROM STDIN%s", snapshotTable, stageNames(t), copyFormat(t))
	for _, out := range copyOuts {
		n, err := s.pipe(ctx, pc, out, copySQL)
		if err != nil {
			return 0, err
		}
		rows += n
	}
	if err := execSimple(ctx, pc, "ANALYZE "+snapshotTable); err != nil {
		return 0, fmt.Errorf("merge copy into chat table: %w", err)
	}
	dead, err := s.mergeRange(ctx, pc, 1, rows+1, true)
	if err != nil {
		return 0, fmt.Errorf("merge copy into chat table: %w", err)
	}
	n, err := s.deleteExtra(ctx, pc)
	if err != nil {
		return 0, fmt.Errorf("merge copy into chat table: %w", err)
	}
	if dead+n > 0 {
		s.Stats.DeadLetters.Add(int64(dead + n))
	}
	return rows, nil
}

// upsertFromSnapshot is the statement writing staged rows [$1, $2) into
// the chat table; rows already equal are left alone.
func upsertFromSnapshot(t *schema.Table) string {
	var set, old, cur []string
	for i, c := range t.Columns {
		if t.IsKey(i) {
			continue
		}
		q := schema.Quote(c.Name)
		set = append(set, q+" = EXCLUDED."+q)
		old = append(old, comparable(c, "u."+q))
		cur = append(cur, comparable(c, "EXCLUDED."+q))
	}
	sql := fmt.Sprintf("INSERT INTO %s AS u (%s) SELECT %s FROM %s s WHERE s.cdc_n >= $1 AND s.cdc_n < $2 ON CONFLICT (%s) ",
		t.Ident(), t.ColumnList(), strings.Join(fromStage(t, "s"), ", "), snapshotTable, strings.Join(quoteAll(t.KeyNames()), ", "))
	if len(set) == 0 {
		return sql + "DO NOTHING"
	}
	return sql + fmt.Sprintf("DO UPDATE SET %s WHERE (%s) IS DISTINCT FROM (%s)", strings.Join(set, ", "), strings.Join(old, ", "), strings.Join(cur, ", "))
}

// comparable is expr in a form with an equality operator: the value for
// built-in types hashed by value, the text form otherwise (json, xml and
// point have no equality operator).
func comparable(c schema.Column, expr string) string {
	if c.ByHash {
		return expr
	}
	return expr + "::text"
}

// mergeRange writes staged rows [lo, hi) under a savepoint; when chat
// refuses one, it splits the range until the refused rows stand alone and
// records them as dead letters. first marks the whole range, tried before
// the index that splitting needs exists.
func (s *Sink) mergeRange(ctx context.Context, pc *pgconn.PgConn, lo, hi int64, first bool) (dead int, err error) {
	if lo >= hi {
		return 0, nil
	}
	if err := execSimple(ctx, pc, "SAVEPOINT cdc_merge"); err != nil {
		return 0, err
	}
	_, err = pc.ExecParams(ctx, upsertFromSnapshot(s.table), [][]byte{fmt.Appendf(nil, "%d", lo), fmt.Appendf(nil, "%d", hi)}, nil, nil, nil).Close()
	if err == nil {
		return 0, execSimple(ctx, pc, "RELEASE SAVEPOINT cdc_merge")
	}
	if !keyed.RowRejected(err) {
		return 0, err
	}
	if err := execSimple(ctx, pc, "ROLLBACK TO SAVEPOINT cdc_merge; RELEASE SAVEPOINT cdc_merge"); err != nil {
		return 0, err
	}
	if first {
		s.log.Warn("chat database refused a row of the first copy; isolating it", "rows", hi-lo, "err", err)
		if err := execSimple(ctx, pc, "CREATE INDEX ON "+snapshotTable+" (cdc_n)"); err != nil {
			return 0, err
		}
	}
	if hi-lo == 1 {
		c, rerr := s.stagedRow(ctx, pc, lo)
		if rerr != nil {
			return 0, rerr
		}
		return 1, s.deadLetter(ctx, pc, c, err)
	}
	mid := lo + (hi-lo)/2
	a, err := s.mergeRange(ctx, pc, lo, mid, false)
	if err != nil {
		return 0, err
	}
	b, err := s.mergeRange(ctx, pc, mid, hi, false)
	return a + b, err
}

// stagedRow reads staged row n as a change, for its dead letter.
func (s *Sink) stagedRow(ctx context.Context, pc *pgconn.PgConn, n int64) (*change.Change, error) {
	t := s.table
	formats := make([]int16, len(t.Columns))
	for i := range formats {
		formats[i] = t.Format.Code()
	}
	rr := pc.ExecParams(ctx, fmt.Sprintf("SELECT %s FROM %s WHERE cdc_n = $1", stageNames(t), snapshotTable),
		[][]byte{fmt.Appendf(nil, "%d", n)}, nil, nil, formats)
	c := &change.Change{Op: change.OpUpsert}
	for rr.NextRow() {
		for _, v := range rr.Values() {
			c.Values = append(c.Values, append([]byte(nil), v...))
		}
	}
	if _, err := rr.Close(); err != nil {
		return nil, fmt.Errorf("read refused row: %w", err)
	}
	if len(c.Values) != len(t.Columns) {
		return nil, fmt.Errorf("read refused row %d: not found", n)
	}
	return c, nil
}

// deleteExtra deletes the chat rows the copy does not have. If chat refuses
// (a foreign key of another chat table, say), each row is deleted apart and
// the refused ones are recorded as dead letters; it returns how many.
func (s *Sink) deleteExtra(ctx context.Context, pc *pgconn.PgConn) (dead int, err error) {
	t := s.table
	match := make([]string, len(t.Key))
	for i, k := range t.Key {
		match[i] = fmt.Sprintf("u.%s = %s", schema.Quote(t.Columns[k].Name), fromStage(t, "s")[k])
	}
	missing := fmt.Sprintf("NOT EXISTS (SELECT 1 FROM %s s WHERE %s)", snapshotTable, strings.Join(match, " AND "))
	if err := execSimple(ctx, pc, "SAVEPOINT cdc_merge"); err != nil {
		return 0, err
	}
	_, err = pc.Exec(ctx, fmt.Sprintf("DELETE FROM %s u WHERE %s", t.Ident(), missing)).ReadAll()
	if err == nil {
		return 0, execSimple(ctx, pc, "RELEASE SAVEPOINT cdc_merge")
	}
	if !keyed.RowRejected(err) {
		return 0, err
	}
	if err := execSimple(ctx, pc, "ROLLBACK TO SAVEPOINT cdc_merge; RELEASE SAVEPOINT cdc_merge"); err != nil {
		return 0, err
	}
	keys := make([]string, len(t.Key))
	for i, k := range t.Key {
		keys[i] = "u." + t.Columns[k].Expr
	}
	formats := make([]int16, len(t.Key))
	for i := range formats {
		formats[i] = t.Format.Code()
	}
	b := change.NewBatch(len(t.Columns), t.Key)
	rr := pc.ExecParams(ctx, fmt.Sprintf("SELECT %s FROM %s u WHERE %s", strings.Join(keys, ", "), t.Ident(), missing), nil, nil, nil, formats)
	for rr.NextRow() {
		v := b.NewValues()
		for i, x := range rr.Values() {
			v[t.Key[i]] = b.Copy(x)
		}
		b.Add(change.Change{Op: change.OpDelete, Values: v})
	}
	if _, err := rr.Close(); err != nil {
		return 0, err
	}
	return s.isolate(ctx, pc, b.Changes(), all(len(b.Changes())))
}
