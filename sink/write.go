package sink

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/myusta/cdc/internal/schema"
)

// beginLocked opens a transaction holding the writer lock.
func (s *Sink) beginLocked(ctx context.Context, pc *pgconn.PgConn) error {
	return execSimple(ctx, pc, "BEGIN; "+s.sql.lock)
}

// encoder builds binary array parameters in a buffer reused across batches.
type encoder struct {
	buf     []byte
	params  [][]byte
	formats []int16
}

// arrays encodes, for each column, one binary array of that column's values
// over the changes at idx; only the key columns, in key order, when keyOnly
// is set.
func (e *encoder) arrays(t *schema.Table, changes []Change, idx []int, keyOnly bool) (params [][]byte, formats []int16) {
	e.buf = e.buf[:0]
	e.params = e.params[:0]
	e.formats = e.formats[:0]
	var offsets []int
	vals := make([][]byte, len(idx))
	cols := t.Key
	if !keyOnly {
		cols = all(len(t.Columns))
	}
	for _, col := range cols {
		offsets = append(offsets, len(e.buf))
		for j, i := range idx {
			vals[j] = changes[i].Values[col]
		}
		e.buf = appendArray(e.buf, elemOID(t, col), vals)
	}
	offsets = append(offsets, len(e.buf))
	for i := 0; i+1 < len(offsets); i++ {
		e.params = append(e.params, e.buf[offsets[i]:offsets[i+1]])
		e.formats = append(e.formats, 1)
	}
	return e.params, e.formats
}

func checkpointParams(slot string, cp Checkpoint) [][]byte {
	var partial []byte
	if cp.PartialXact != 0 {
		partial = []byte(cp.PartialXact.String())
	}
	return [][]byte{[]byte(slot), []byte(cp.LSN.String()), partial, []byte(fmt.Sprint(cp.PartialChanges))}
}

// split sorts the change indexes of b into deletes, full upserts and
// partial upserts (some columns unchanged and not carried).
func split(changes []Change) (dels, ups, partial []int) {
	for i := range changes {
		switch {
		case changes[i].Op == OpDelete:
			dels = append(dels, i)
		case changes[i].Unchanged != 0:
			partial = append(partial, i)
		default:
			ups = append(ups, i)
		}
	}
	return dels, ups, partial
}

// queueChanges adds the set-based statements for the changes at dels and ups.
func (s *Sink) queueChanges(batch *pgconn.Batch, changes []Change, dels, ups []int) {
	if len(dels) > 0 {
		p, f := s.enc.arrays(s.table, changes, dels, true)
		batch.ExecStatement(s.stmts[stmtDelete], cloneParams(p), cloneFormats(f), nil)
	}
	if len(ups) > 0 {
		p, f := s.enc.arrays(s.table, changes, ups, false)
		batch.ExecStatement(s.stmts[stmtUpsert], p, f, nil)
	}
}

// cloneParams copies params that the encoder is about to reuse; the delete
// array is small (keys only), so copying it is cheap.
func cloneParams(p [][]byte) [][]byte {
	out := make([][]byte, len(p))
	for i := range p {
		out[i] = append([]byte(nil), p[i]...)
	}
	return out
}

func cloneFormats(f []int16) []int16 { return append([]int16(nil), f...) }

// write applies b on pc. It tries the whole batch as one pipelined implicit
// transaction; if the chat database rejects a row, it applies the batch again
// in an explicit transaction that isolates the rejected rows.
func (s *Sink) write(ctx context.Context, pc *pgconn.PgConn, b *Batch) (dead int, err error) {
	dels, ups, partial := split(b.changes)
	if len(partial) == 0 && len(ups) >= stageMinRows {
		err = s.writeStaged(ctx, pc, b, dels, ups)
		if err == nil || !rowRejected(err) {
			return 0, err
		}
		s.log.Warn("chat database rejected a row; isolating it", "rows", len(b.changes), "lsn", b.Checkpoint.LSN, "err", err)
	} else if len(partial) == 0 {
		var batch pgconn.Batch
		batch.ExecParams(s.sql.lock, nil, nil, nil, nil)
		if b.truncate {
			batch.ExecParams(s.sql.truncate, nil, nil, nil, nil)
		}
		s.queueChanges(&batch, b.changes, dels, ups)
		queueResolve(&batch, s.resolvableChanges(b.changes))
		if b.Checkpoint != (Checkpoint{}) {
			batch.ExecStatement(s.stmts[stmtCheckpoint], checkpointParams(s.opts.Slot, b.Checkpoint), nil, nil)
		}
		_, err = pc.ExecBatch(ctx, &batch).ReadAll()
		if err == nil || !rowRejected(err) {
			return 0, err
		}
		s.log.Warn("chat database rejected a row; isolating it", "rows", len(b.changes), "lsn", b.Checkpoint.LSN, "err", err)
	}
	return s.writeCareful(ctx, pc, b, dels, ups, partial)
}

// rowRejected reports whether err is the chat database refusing a value
// (data exception or integrity violation) rather than a fault of the
// connection or of the schema as a whole.
func rowRejected(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || len(pgErr.Code) != 5 {
		return false
	}
	return pgErr.Code[:2] == "22" || pgErr.Code[:2] == "23" || pgErr.Code == "54000"
}

func execSimple(ctx context.Context, pc *pgconn.PgConn, sql string) error {
	_, err := pc.Exec(ctx, sql).ReadAll()
	return err
}

// writeCareful applies b in an explicit transaction, bisecting the set of
// changes under savepoints until every rejected change stands alone and is
// recorded as a dead letter.
func (s *Sink) writeCareful(ctx context.Context, pc *pgconn.PgConn, b *Batch, dels, ups, partial []int) (dead int, err error) {
	if err := s.beginLocked(ctx, pc); err != nil {
		return 0, err
	}
	defer func() {
		if err != nil && !pc.IsClosed() {
			_ = execSimple(ctx, pc, "ROLLBACK")
		}
	}()
	if b.truncate {
		if err := execSimple(ctx, pc, s.sql.truncate); err != nil {
			return 0, err
		}
	}
	all := append(append([]int(nil), dels...), ups...)
	if dead, err = s.isolate(ctx, pc, b.changes, all); err != nil {
		return 0, err
	}
	for _, i := range partial {
		n, err := s.isolatePartial(ctx, pc, &b.changes[i])
		if err != nil {
			return 0, err
		}
		dead += n
	}
	if err := execResolve(ctx, pc, s.resolvableChanges(b.changes)); err != nil {
		return 0, err
	}
	if b.Checkpoint != (Checkpoint{}) {
		_, err := pc.ExecStatement(ctx, s.stmts[stmtCheckpoint], checkpointParams(s.opts.Slot, b.Checkpoint), nil, nil).Close()
		if err != nil {
			return 0, err
		}
	}
	return dead, execSimple(ctx, pc, "COMMIT")
}

// isolate applies the changes at idx inside a savepoint; when the chat
// database rejects one, it rolls back and retries each half, down to single
// changes, which become dead letters.
func (s *Sink) isolate(ctx context.Context, pc *pgconn.PgConn, changes []Change, idx []int) (dead int, err error) {
	if len(idx) == 0 {
		return 0, nil
	}
	var dels, ups []int
	for _, i := range idx {
		if changes[i].Op == OpDelete {
			dels = append(dels, i)
		} else {
			ups = append(ups, i)
		}
	}
	var batch pgconn.Batch
	batch.ExecParams("SAVEPOINT cdc_isolate", nil, nil, nil, nil)
	s.queueChanges(&batch, changes, dels, ups)
	batch.ExecParams("RELEASE SAVEPOINT cdc_isolate", nil, nil, nil, nil)
	_, err = pc.ExecBatch(ctx, &batch).ReadAll()
	if err == nil {
		return 0, nil
	}
	if !rowRejected(err) {
		return 0, err
	}
	if err := execSimple(ctx, pc, "ROLLBACK TO SAVEPOINT cdc_isolate; RELEASE SAVEPOINT cdc_isolate"); err != nil {
		return 0, err
	}
	if len(idx) == 1 {
		return 1, s.deadLetter(ctx, pc, &changes[idx[0]], err)
	}
	half := len(idx) / 2
	a, err := s.isolate(ctx, pc, changes, idx[:half])
	if err != nil {
		return 0, err
	}
	c, err := s.isolate(ctx, pc, changes, idx[half:])
	return a + c, err
}

// isolatePartial updates only the carried columns of a row whose unchanged
// TOASTed values the stream did not send. If the chat row does not exist,
// the full row cannot be built here: the change is recorded and the
// reconciler copies the row from the source.
func (s *Sink) isolatePartial(ctx context.Context, pc *pgconn.PgConn, c *Change) (dead int, err error) {
	t := s.table
	var set, where []string
	var params [][]byte
	var oids []uint32
	add := func(col int) string {
		params = append(params, c.Values[col])
		oids = append(oids, paramOID(t, col))
		return fmt.Sprintf("%s = $%d", schema.Quote(t.Columns[col].Name), len(params))
	}
	for _, k := range t.Key {
		where = append(where, add(k))
	}
	for col := range t.Columns {
		if !t.IsKey(col) && c.Unchanged&(1<<col) == 0 {
			set = append(set, add(col))
		}
	}
	formats := make([]int16, len(params))
	for i := range formats {
		formats[i] = t.Format.Code()
	}
	cond := strings.Join(where, " AND ")
	sql := fmt.Sprintf("UPDATE %s SET %s WHERE %s", t.Ident(), strings.Join(set, ", "), cond)
	if len(set) == 0 {
		sql = fmt.Sprintf("SELECT 1 FROM %s WHERE %s", t.Ident(), cond)
	}
	if err := execSimple(ctx, pc, "SAVEPOINT cdc_isolate"); err != nil {
		return 0, err
	}
	tag, err := pc.ExecParams(ctx, sql, params, oids, formats, nil).Close()
	if err != nil {
		if !rowRejected(err) {
			return 0, err
		}
		if err := execSimple(ctx, pc, "ROLLBACK TO SAVEPOINT cdc_isolate; RELEASE SAVEPOINT cdc_isolate"); err != nil {
			return 0, err
		}
		return 1, s.deadLetter(ctx, pc, c, err)
	}
	if err := execSimple(ctx, pc, "RELEASE SAVEPOINT cdc_isolate"); err != nil {
		return 0, err
	}
	if tag.RowsAffected() == 0 {
		return 1, s.deadLetter(ctx, pc, c, errMissingRow)
	}
	return 0, nil
}

// paramOID is the type of a single-value parameter for column col: the
// base type in binary format; unspecified in text format, so chat infers
// the column's own type and parses the text with its input function.
func paramOID(t *schema.Table, col int) uint32 {
	if t.Format == schema.Text {
		return 0
	}
	return t.Columns[col].Base.OID
}

// all returns 0, 1, …, n-1.
func all(n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = i
	}
	return out
}

// errMissingRow is recorded when an update that omits unchanged TOASTed
// columns finds no chat row to complete them from.
var errMissingRow = errors.New("update omits unchanged TOASTed columns and the chat row does not exist; the reconciler will copy the full row from the source")
