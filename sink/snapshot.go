package sink

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/myusta/cdc/internal/schema"
)

// CopyOut writes every source row, in PostgreSQL binary COPY format with the
// synced columns in order, to w.
type CopyOut func(ctx context.Context, w io.Writer) error

// LoadSnapshot is the chat side of the first copy. In one transaction it
// streams the rows from copyOut into the chat table with binary COPY and
// stores cp (unless zero), so a crash leaves either nothing or the whole
// copy with its checkpoint. An empty chat table is filled directly; a table that already
// has rows (say, from the service cdc replaces) is merged: rows are
// upserted, and rows the source does not have are deleted.
func (s *Sink) LoadSnapshot(ctx context.Context, copyOut CopyOut, cp Checkpoint) (rows int64, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	conn, err := s.writer(ctx)
	if err != nil {
		return 0, err
	}
	defer s.dropBroken()
	pc := conn.Conn().PgConn()
	if err := s.beginLocked(ctx, pc); err != nil {
		return 0, fmt.Errorf("begin copy: %w", err)
	}
	defer func() {
		if err != nil && !pc.IsClosed() {
			_ = execSimple(context.WithoutCancel(ctx), pc, "ROLLBACK")
		}
	}()
	t := s.table
	var empty bool
	if err := conn.QueryRow(ctx, "SELECT NOT EXISTS (SELECT 1 FROM "+t.Ident()+")").Scan(&empty); err != nil {
		return 0, fmt.Errorf("check chat table: %w", err)
	}
	target := t.Ident()
	if !empty {
		target = "cdc_snapshot"
		s.log.Info("chat table already has rows; merging the copy into it", "table", t.String())
		if err := execSimple(ctx, pc, fmt.Sprintf("CREATE TEMP TABLE cdc_snapshot ON COMMIT DROP AS SELECT %s FROM %s WITH NO DATA",
			t.ColumnList(), t.Ident())); err != nil {
			return 0, fmt.Errorf("create staging table: %w", err)
		}
	}
	rows, err = s.pipe(ctx, pc, copyOut, fmt.Sprintf("COPY %s (%s) FROM STDIN (FORMAT binary)", target, t.ColumnList()))
	if err != nil {
		return 0, err
	}
	if !empty {
		if err := execSimple(ctx, pc, mergeSQL(t)); err != nil {
			return 0, fmt.Errorf("merge copy into chat table: %w", err)
		}
	}
	if cp != (Checkpoint{}) {
		if _, err := pc.ExecStatement(ctx, s.stmts[stmtCheckpoint], checkpointParams(s.opts.Slot, cp), nil, nil).Close(); err != nil {
			return 0, fmt.Errorf("store checkpoint: %w", err)
		}
	}
	if err := execSimple(ctx, pc, "COMMIT"); err != nil {
		return 0, fmt.Errorf("commit copy: %w", err)
	}
	s.Stats.LSN.Store(uint64(cp.LSN))
	return rows, nil
}

// pipe runs copyOut into the chat COPY through an in-memory pipe.
func (s *Sink) pipe(ctx context.Context, pc *pgconn.PgConn, copyOut CopyOut, copySQL string) (int64, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pr, pw := io.Pipe()
	outErr := make(chan error, 1)
	go func() {
		err := copyOut(ctx, pw)
		pw.CloseWithError(err)
		outErr <- err
	}()
	tag, err := pc.CopyFrom(ctx, pr, copySQL)
	pr.CloseWithError(io.ErrClosedPipe) // unblock the writer if the chat side failed first
	if oerr := <-outErr; oerr != nil {
		return 0, fmt.Errorf("read source rows: %w", oerr)
	}
	if err != nil {
		return 0, fmt.Errorf("copy into chat table: %w", err)
	}
	return tag.RowsAffected(), nil
}

func mergeSQL(t *schema.Table) string {
	var set, cmpOld, cmpNew []string
	for i, c := range t.Columns {
		if i == t.Key {
			continue
		}
		q := schema.Quote(c.Name)
		set = append(set, q+" = EXCLUDED."+q)
		cmpOld = append(cmpOld, "u."+q)
		cmpNew = append(cmpNew, "EXCLUDED."+q)
	}
	key := schema.Quote(t.KeyColumn().Name)
	upsert := fmt.Sprintf("INSERT INTO %s AS u (%s) SELECT %s FROM cdc_snapshot ON CONFLICT (%s) DO NOTHING",
		t.Ident(), t.ColumnList(), t.ColumnList(), key)
	if len(set) > 0 {
		upsert = fmt.Sprintf("INSERT INTO %s AS u (%s) SELECT %s FROM cdc_snapshot ON CONFLICT (%s) DO UPDATE SET %s WHERE (%s) IS DISTINCT FROM (%s)",
			t.Ident(), t.ColumnList(), t.ColumnList(), key, strings.Join(set, ", "), strings.Join(cmpOld, ", "), strings.Join(cmpNew, ", "))
	}
	return "ANALYZE cdc_snapshot; " + upsert + "; " +
		fmt.Sprintf("DELETE FROM %s u WHERE NOT EXISTS (SELECT 1 FROM cdc_snapshot s WHERE s.%s = u.%s)", t.Ident(), key, key)
}

// Empty reports whether the chat table has no rows.
func (s *Sink) Empty(ctx context.Context) (bool, error) {
	var empty bool
	if err := s.pool.QueryRow(ctx, "SELECT NOT EXISTS (SELECT 1 FROM "+s.table.Ident()+")").Scan(&empty); err != nil {
		return false, fmt.Errorf("check chat table: %w", err)
	}
	return empty, nil
}
