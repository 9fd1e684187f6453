package sink

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/myusta/cdc/change"
	"github.com/myusta/cdc/internal/keyed"
	"github.com/myusta/cdc/internal/schema"
)

// beginLocked opens a transaction holding the writer lock.
func (s *Sink) beginLocked(ctx context.Context, pc *pgconn.PgConn) error {
	return execSimple(ctx, pc, "BEGIN; "+s.sql.lock)
}

// beginStream opens a stream write's explicit transaction.
func (s *Sink) beginStream(ctx context.Context, pc *pgconn.PgConn) error {
	res, err := pc.Exec(ctx, "BEGIN; "+s.sql.streamLock).ReadAll()
	if err != nil {
		return err
	}
	return s.observeLock(res[len(res)-1])
}

// observeLock takes chat's WAL positions from a stream write's lock result.
func (s *Sink) observeLock(res *pgconn.Result) error {
	if !s.opts.AsyncCommit {
		return nil
	}
	if len(res.Rows) != 1 {
		return fmt.Errorf("read chat WAL positions: %d rows", len(res.Rows))
	}
	return s.dur.observeRow(res.Rows[0])
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
func (e *encoder) arrays(t *schema.Table, changes []change.Change, idx []int, keyOnly bool) (params [][]byte, formats []int16) {
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
		e.buf = keyed.AppendArray(e.buf, keyed.ElemOID(t, col), vals)
	}
	offsets = append(offsets, len(e.buf))
	for i := 0; i+1 < len(offsets); i++ {
		e.params = append(e.params, e.buf[offsets[i]:offsets[i+1]])
		e.formats = append(e.formats, 1)
	}
	return e.params, e.formats
}

func checkpointParams(slot string, cp change.Checkpoint) [][]byte {
	var partial []byte
	if cp.PartialXact != 0 {
		partial = []byte(cp.PartialXact.String())
	}
	return [][]byte{[]byte(slot), []byte(cp.LSN.String()), partial, []byte(fmt.Sprint(cp.PartialChanges))}
}

// split sorts the change indexes of b into deletes, full upserts and
// partial upserts (some columns unchanged and not carried).
func split(changes []change.Change) (dels, ups, partial []int) {
	for i := range changes {
		switch {
		case changes[i].Op == change.OpDelete:
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
func (s *Sink) queueChanges(batch *pgconn.Batch, changes []change.Change, dels, ups []int) {
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

// write applies b on pc. A batch that is a chat transaction of its own
// goes through the fast paths: one pipelined implicit transaction, or a
// staged COPY for many rows. A batch of a source transaction too large for
// one (b.Open, or one continuing the transaction an Open batch left open)
// is written into the chat transaction kept open for it, which the batch
// that ends the source transaction commits. Either way, when chat refuses
// a row, the batch is applied again in source order (see replay), and only
// a change refused in that order becomes a dead letter.
func (s *Sink) write(ctx context.Context, pc *pgconn.PgConn, b *change.Batch) (dead int, err error) {
	setBased := true
	if !s.tx.open && !b.Open {
		done, err := s.writeWhole(ctx, pc, b)
		if done || (err != nil && !keyed.RowRejected(err)) {
			return 0, err
		}
		if err != nil {
			s.log.Warn("chat database refused a change of the batch; applying the batch in source order", "rows", len(b.Changes()), "lsn", b.Checkpoint.LSN, "err", err)
			setBased = false
			s.resolving = nil // that attempt's resolutions were rolled back with it
			s.open.begin()
		}
	}
	if !s.tx.open {
		if err := s.beginStream(ctx, pc); err != nil {
			return 0, err
		}
		s.tx.open, s.tx.done = true, make(chan struct{})
	}
	if dead, err = s.writeChunk(ctx, pc, b, setBased); err != nil {
		return 0, err
	}
	if b.Open {
		return dead, nil
	}
	if b.Checkpoint != (change.Checkpoint{}) {
		if _, err := pc.ExecStatement(ctx, s.stmts[stmtCheckpoint], checkpointParams(s.opts.Slot, b.Checkpoint), nil, nil).Close(); err != nil {
			return 0, err
		}
	}
	if err := execSimple(ctx, pc, "COMMIT"); err != nil {
		return 0, err
	}
	s.closeTx()
	return dead, nil
}

// writeWhole tries b as one chat transaction, set-based. done is false when
// b needs the explicit transaction (some rows carry unchanged TOASTed
// values, which are written one by one) or chat refused a row (err).
func (s *Sink) writeWhole(ctx context.Context, pc *pgconn.PgConn, b *change.Batch) (done bool, err error) {
	dels, ups, partial := split(b.Changes())
	switch {
	case len(partial) > 0:
		return false, nil
	case len(ups) >= stageMinRows:
		err := s.writeStaged(ctx, pc, b, dels, ups)
		return err == nil, err
	}
	var batch pgconn.Batch
	batch.ExecStatement(s.stmts[stmtStreamLock], nil, nil, nil)
	if b.Truncates() {
		batch.ExecParams(s.sql.truncate, nil, nil, nil, nil)
	}
	s.queueChanges(&batch, b.Changes(), dels, ups)
	queueResolve(&batch, s.resolvableChanges(b.Changes()))
	if b.Checkpoint != (change.Checkpoint{}) {
		batch.ExecStatement(s.stmts[stmtCheckpoint], checkpointParams(s.opts.Slot, b.Checkpoint), nil, nil)
	}
	res, err := pc.ExecBatch(ctx, &batch).ReadAll()
	if err != nil {
		return false, err
	}
	return true, s.observeLock(res[0])
}

// writeChunk applies b in the open transaction under a savepoint:
// set-based first (unless setBased is false: chat already refused that),
// then, if chat refuses a row, in source order. It resolves the open dead
// letters of the keys it wrote.
func (s *Sink) writeChunk(ctx context.Context, pc *pgconn.PgConn, b *change.Batch, setBased bool) (dead int, err error) {
	if err := execSimple(ctx, pc, "SAVEPOINT cdc_chunk"); err != nil {
		return 0, err
	}
	if setBased {
		dead, err = s.setBased(ctx, pc, b)
		if err != nil && !keyed.RowRejected(err) {
			return 0, err
		}
		if err != nil {
			s.log.Warn("chat database refused a change of the batch; applying the batch in source order", "rows", len(b.Changes()), "lsn", b.Checkpoint.LSN, "err", err)
			if err := execSimple(ctx, pc, "ROLLBACK TO SAVEPOINT cdc_chunk"); err != nil {
				return 0, err
			}
			s.open.begin()
			setBased = false
		}
	}
	if !setBased {
		if dead, err = s.replay(ctx, pc, b); err != nil {
			return 0, err
		}
	}
	if err := execResolve(ctx, pc, s.resolvableChanges(b.Changes())); err != nil {
		return 0, err
	}
	return dead, execSimple(ctx, pc, "RELEASE SAVEPOINT cdc_chunk")
}

// setBased writes b's compacted changes with one statement per kind, in
// the open transaction: the truncate, deletes (first, so the values they
// free are free for the upserts), upserts (staged through COPY when many),
// then the updates that omit unchanged TOASTed columns, one by one.
func (s *Sink) setBased(ctx context.Context, pc *pgconn.PgConn, b *change.Batch) (dead int, err error) {
	dels, ups, partial := split(b.Changes())
	if err := s.truncateAndDelete(ctx, pc, b, dels); err != nil {
		return 0, err
	}
	var batch pgconn.Batch
	switch {
	case len(ups) >= stageMinRows:
		if err := s.stage(ctx, pc, b, ups); err != nil {
			return 0, err
		}
		// The staging table empties at commit; a transaction of several
		// batches empties it after each.
		batch.ExecStatement(s.stmts[stmtUpsertStaged], nil, nil, nil)
		batch.ExecParams("TRUNCATE pg_temp."+stageTable, nil, nil, nil, nil)
	case len(ups) > 0:
		s.queueChanges(&batch, b.Changes(), nil, ups)
	}
	if len(ups) > 0 {
		if _, err := pc.ExecBatch(ctx, &batch).ReadAll(); err != nil {
			return 0, err
		}
	}
	if len(partial) == 0 {
		return 0, nil
	}
	batch = pgconn.Batch{}
	for _, i := range partial {
		s.queuePartial(&batch, &b.Changes()[i])
	}
	results, err := pc.ExecBatch(ctx, &batch).ReadAll()
	if err != nil {
		return 0, err
	}
	for j, i := range partial {
		if results[j].CommandTag.RowsAffected() == 0 {
			dead++
			if err := s.deadLetter(ctx, pc, &b.Changes()[i], errMissingRow); err != nil {
				return 0, err
			}
		}
	}
	return dead, nil
}

func execSimple(ctx context.Context, pc *pgconn.PgConn, sql string) error {
	_, err := pc.Exec(ctx, sql).ReadAll()
	return err
}

// isolate applies the changes at idx inside a savepoint; when the chat
// database rejects one, it rolls back and retries each half, down to single
// changes, which become dead letters.
func (s *Sink) isolate(ctx context.Context, pc *pgconn.PgConn, changes []change.Change, idx []int) (dead int, err error) {
	if len(idx) == 0 {
		return 0, nil
	}
	var dels, ups []int
	for _, i := range idx {
		if changes[i].Op == change.OpDelete {
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
	if !keyed.RowRejected(err) {
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

// queuePartial queues the update of only the carried columns of a row
// whose unchanged TOASTed values the stream did not send. If the chat row
// does not exist, the full row cannot be built here: the change is recorded
// (errMissingRow) and the reconciler copies the row from the source.
func (s *Sink) queuePartial(batch *pgconn.Batch, c *change.Change) {
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
	batch.ExecParams(sql, params, oids, formats, nil)
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
