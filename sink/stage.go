package sink

import (
	"bytes"
	"context"
	"encoding/binary"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/myusta/cdc/change"
)

// stageMinRows is the batch size from which upserts go through binary COPY
// into a temporary table instead of array parameters. COPY costs two more
// round trips but the server parses it faster: on a 1M-row table, 10k-row
// batches of updates applied at ~60k rows/s through unnest() and ~75k rows/s
// through COPY + staging (see BENCHMARKS.md); one-row batches are faster
// through the single round trip of unnest().
const stageMinRows = 1000

// copyRows encodes the changes at idx as a PostgreSQL binary COPY stream.
func (e *encoder) copyRows(changes []change.Change, idx []int, ncols int) []byte {
	e.buf = append(e.buf[:0], "PGCOPY\n\377\r\n\000"...)
	e.buf = binary.BigEndian.AppendUint32(e.buf, 0) // flags
	e.buf = binary.BigEndian.AppendUint32(e.buf, 0) // header extension
	for _, i := range idx {
		e.buf = binary.BigEndian.AppendUint16(e.buf, uint16(ncols))
		for _, v := range changes[i].Values {
			if v == nil {
				e.buf = binary.BigEndian.AppendUint32(e.buf, 0xFFFFFFFF)
				continue
			}
			e.buf = binary.BigEndian.AppendUint32(e.buf, uint32(len(v)))
			e.buf = append(e.buf, v...)
		}
	}
	return binary.BigEndian.AppendUint16(e.buf, 0xFFFF)
}

// stage copies the upserts at ups into the staging table.
func (s *Sink) stage(ctx context.Context, pc *pgconn.PgConn, b *change.Batch, ups []int) error {
	data := s.enc.copyRows(b.Changes(), ups, len(s.table.Columns))
	_, err := pc.CopyFrom(ctx, bytes.NewReader(data), "COPY pg_temp."+stageTable+" FROM STDIN (FORMAT binary)")
	return err
}

// writeStaged applies a large batch in an explicit transaction: the
// deletes first, then the upserts are copied into the staging table and
// merged with one statement, and the checkpoint follows with the COMMIT in
// the same round trip.
func (s *Sink) writeStaged(ctx context.Context, pc *pgconn.PgConn, b *change.Batch, dels, ups []int) (err error) {
	if err := s.beginStream(ctx, pc); err != nil {
		return err
	}
	defer func() {
		if err != nil && !pc.IsClosed() && pc.TxStatus() != 'I' {
			_ = execSimple(context.WithoutCancel(ctx), pc, "ROLLBACK")
		}
	}()
	if err := s.truncateAndDelete(ctx, pc, b, dels); err != nil {
		return err
	}
	if err := s.stage(ctx, pc, b, ups); err != nil {
		return err
	}
	var batch pgconn.Batch
	batch.ExecStatement(s.stmts[stmtUpsertStaged], nil, nil, nil)
	queueResolve(&batch, s.resolvableChanges(b.Changes()))
	if b.Checkpoint != (change.Checkpoint{}) {
		batch.ExecStatement(s.stmts[stmtCheckpoint], checkpointParams(s.opts.Slot, b.Checkpoint), nil, nil)
	}
	batch.ExecParams("COMMIT", nil, nil, nil, nil)
	_, err = pc.ExecBatch(ctx, &batch).ReadAll()
	return err
}

// truncateAndDelete runs b's truncate and the deletes at dels, if any.
func (s *Sink) truncateAndDelete(ctx context.Context, pc *pgconn.PgConn, b *change.Batch, dels []int) error {
	if !b.Truncates() && len(dels) == 0 {
		return nil
	}
	var batch pgconn.Batch
	if b.Truncates() {
		batch.ExecParams(s.sql.truncate, nil, nil, nil, nil)
	}
	s.queueChanges(&batch, b.Changes(), dels, nil)
	_, err := pc.ExecBatch(ctx, &batch).ReadAll()
	return err
}
