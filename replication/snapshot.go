package replication

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/myusta/cdc/change"
	"github.com/myusta/cdc/internal/schema"
	"github.com/myusta/cdc/migrations"
)

// progressEvery is how often the first copy reports progress.
const progressEvery = 5 * time.Second

// copyBuffer is the size of the chunks the first copy hands to chat.
const copyBuffer = 64 << 10

// firstCopy creates the slot with an exported snapshot and copies the table
// as of that snapshot. The replication connection stays open and idle while
// the copy runs, which keeps the snapshot alive; the returned checkpoint is
// the slot's consistent point, stored in chat with the last copied rows, so
// streaming resumes exactly where the copy ends.
func (s *Stream) firstCopy(ctx context.Context, conn *pgconn.PgConn) (change.Checkpoint, error) {
	var res pglogrepl.CreateReplicationSlotResult
	err := s.onStandbyNudged(ctx, func() (err error) {
		res, err = createSlot(ctx, conn, s.opts.Slot, s.onStandby)
		return err
	})
	if err != nil {
		return change.Checkpoint{}, fmt.Errorf("create slot %s: %w", s.opts.Slot, err)
	}
	lsn, err := pglogrepl.ParseLSN(res.ConsistentPoint)
	if err != nil {
		return change.Checkpoint{}, fmt.Errorf("create slot %s: consistent point: %w", s.opts.Slot, err)
	}
	cp := change.Checkpoint{LSN: lsn}
	s.log.Info("created replication slot; copying the table under its snapshot", "consistent_lsn", lsn, "table", s.opts.Table.String())
	if err := copyTable(ctx, s.pool, s.opts.Table, res.SnapshotName, s.opts.CopyWorkers, s.sink, cp, s.log); err != nil {
		return cp, err
	}
	return cp, nil
}

// copyTable copies every source row into chat through the sink with COPY
// (binary or text, the table's format): under the exported snapshot when one is given, else under a fresh
// repeatable-read snapshot; in up to workers parts at once (see copyParts).
// cp is stored with the rows (zero: none). Progress (rows, rows/s, ETA) is
// logged every progressEvery.
func copyTable(ctx context.Context, pool *pgxpool.Pool, t *schema.Table, snapshot string, workers int, sk change.Sink, cp change.Checkpoint, log *slog.Logger) error {
	parts, err := copyParts(ctx, pool, t, snapshot, workers)
	if err != nil {
		return err
	}
	var estimate float64
	if err := pool.QueryRow(ctx, "SELECT GREATEST(reltuples, 0) FROM pg_class WHERE oid = $1::regclass", t.Ident()).Scan(&estimate); err != nil {
		return fmt.Errorf("estimate rows: %w", err)
	}
	// COPY names no generated column of a table (COPY t (col)); a query
	// reads it (COPY (SELECT col FROM t)).
	gen, err := migrations.GeneratedColumns(ctx, pool, t)
	if err != nil {
		return err
	}
	outs := make([]change.CopyOut, len(parts))
	pids := make([]uint32, len(parts))
	for i, where := range parts {
		src, err := pool.Acquire(ctx)
		if err != nil {
			return fmt.Errorf("connect for the first copy: %w", err)
		}
		defer src.Release()
		pids[i] = src.Conn().PgConn().PID()
		outs[i] = copyOut(src, t, snapshot, where, len(gen) > 0)
	}
	start := time.Now()
	stop := reportProgress(ctx, pool, log, pids, estimate, start)
	defer stop()
	rows, err := sk.LoadSnapshot(ctx, outs, cp)
	if err != nil {
		return fmt.Errorf("first copy: %w", err)
	}
	d := time.Since(start)
	log.Info("first copy done", "rows", rows, "seconds", d.Seconds(), "rows_per_sec", int64(float64(rows)/max(d.Seconds(), 1e-3)), "parts", len(parts), "lsn", cp.LSN)
	return nil
}

// minPartPages is the smallest part of a parallel first copy, in heap pages
// (8 MB): smaller tables are copied in one part.
var minPartPages int64 = 1000

// copyParts splits the table into ranges of heap pages (SQL conditions on
// ctid), one per part, so that parts can be copied at once: on 2 cores, 1M
// rows took 4.5-5.1 s in two parts and 5.3-5.4 s in one (see BENCHMARKS.md).
// It returns one part without a condition (the whole table) when there is
// no exported snapshot for the parts to share, the source cannot scan a
// range of pages (before PostgreSQL 14 each part would read the whole
// table), cdc may read only some columns, or the table is small.
func copyParts(ctx context.Context, pool *pgxpool.Pool, t *schema.Table, snapshot string, workers int) ([]string, error) {
	whole := []string{""}
	workers = min(workers, int(pool.Config().MaxConns)-1)
	if snapshot == "" || workers < 2 {
		return whole, nil
	}
	var version int
	var pages int64
	var readAll bool
	err := pool.QueryRow(ctx, `SELECT current_setting('server_version_num')::int,
pg_relation_size($1::regclass) / current_setting('block_size')::int, has_table_privilege($1::regclass, 'SELECT')`, t.Ident()).
		Scan(&version, &pages, &readAll)
	if err != nil {
		return nil, fmt.Errorf("size the first copy: %w", err)
	}
	n := min(workers, int(pages/minPartPages))
	if version < 140000 || !readAll || n < 2 {
		return whole, nil
	}
	parts := make([]string, n)
	for i := range parts {
		parts[i] = fmt.Sprintf("ctid >= '(%d,0)'::tid", pages*int64(i)/int64(n))
		if i < n-1 {
			// The last part has no upper bound: pages added since the size
			// was read hold no rows visible to the snapshot, but cost
			// nothing to include.
			parts[i] += fmt.Sprintf(" AND ctid < '(%d,0)'::tid", pages*int64(i+1)/int64(n))
		}
	}
	return parts, nil
}

// copyOut writes the rows matching where (all when empty) on src under the
// snapshot (a fresh one when empty); query reads them with a query, which
// generated columns need.
func copyOut(src *pgxpool.Conn, t *schema.Table, snapshot, where string, query bool) change.CopyOut {
	format := " (FORMAT binary)"
	if t.Format == schema.Text {
		format = ""
	}
	sql := fmt.Sprintf("COPY %s (%s) TO STDOUT%s", t.Ident(), t.ColumnList(), format)
	switch {
	case where != "":
		sql = fmt.Sprintf("COPY (SELECT %s FROM %s WHERE %s) TO STDOUT%s", t.ColumnList(), t.Ident(), where, format)
	case query:
		sql = fmt.Sprintf("COPY (SELECT %s FROM %s) TO STDOUT%s", t.ColumnList(), t.Ident(), format)
	}
	return func(ctx context.Context, w io.Writer) error {
		tx, err := src.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
		if err != nil {
			return fmt.Errorf("begin snapshot transaction: %w", err)
		}
		defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
		if snapshot != "" {
			if _, err := tx.Exec(ctx, "SET TRANSACTION SNAPSHOT "+quoteLiteral(snapshot)); err != nil {
				return fmt.Errorf("import snapshot: %w", err)
			}
		}
		// The source sends one CopyData message per row; the chat COPY
		// sends one per read of the pipe. Buffering here turns a million
		// ~200-byte messages (a pipe hand-off and a send each) into
		// 64 KiB ones: the copy of 1M rows took 5.3-5.4 s instead of
		// 6.3-7.2 s (see BENCHMARKS.md).
		bw := bufio.NewWriterSize(w, copyBuffer)
		_, err = src.Conn().PgConn().CopyTo(ctx, bw, sql)
		if err == nil {
			err = bw.Flush()
		}
		if err != nil {
			return fmt.Errorf("copy out of %s: %w", t, err)
		}
		return nil
	}
}

// reportProgress logs the copy's progress every progressEvery, read from
// pg_stat_progress_copy for the backends of the parts (a part that has
// finished no longer counts, so with several parts the count can dip near
// the end), until stop is called.
func reportProgress(ctx context.Context, pool *pgxpool.Pool, log *slog.Logger, pids []uint32, estimate float64, start time.Time) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	ids := make([]int32, len(pids))
	for i, p := range pids {
		ids[i] = int32(p)
	}
	go func() {
		defer close(done)
		t := time.NewTicker(progressEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			var rows int64
			err := pool.QueryRow(ctx, "SELECT COALESCE(sum(tuples_processed), 0)::int8 FROM pg_stat_progress_copy WHERE pid = ANY($1)", ids).Scan(&rows)
			if err != nil {
				continue
			}
			elapsed := time.Since(start).Seconds()
			rate := float64(rows) / max(elapsed, 1e-3)
			args := []any{"rows", rows, "rows_per_sec", int64(rate)}
			if estimate > 0 {
				remaining := max(estimate-float64(rows), 0)
				args = append(args, "of_about", int64(estimate), "eta", (time.Duration(remaining/max(rate, 1)) * time.Second).Round(time.Second))
			}
			log.Info("first copy in progress", args...)
		}
	}()
	return func() { cancel(); <-done }
}
