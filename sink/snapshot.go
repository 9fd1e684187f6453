package sink

import (
	"context"
	"fmt"
	"io"
	"sync/atomic"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/myusta/cdc/change"
	"github.com/myusta/cdc/internal/keyed"
	"golang.org/x/sync/errgroup"
)

// LoadSnapshot is the chat side of the first copy: the copyOuts together
// write every source row (each a part of the table, under one snapshot).
//
// An empty table is filled by all parts at once, each on its own chat
// connection in its own COPY transaction, while the writer transaction holds
// the writer lock; cp is stored in that transaction once every part has
// committed. A copy cut short leaves rows without a checkpoint, so the next
// start copies again and merges. With one part it is all one transaction.
//
// A table that already has rows (say, from the service cdc replaces), or
// one whose COPY chat refused a row of, is merged in one transaction: the
// parts fill a staging table in turn, rows are upserted, rows the source
// does not have are deleted, and cp (unless zero) is stored, so a crash
// leaves either nothing or the whole merge with its checkpoint. Rows chat
// refuses are isolated and recorded in sync_errors; the rest commits.
func (s *Sink) LoadSnapshot(ctx context.Context, copyOuts []change.CopyOut, cp change.Checkpoint) (rows int64, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.waitIdle(ctx); err != nil {
		return 0, err
	}
	conn, err := s.writer(ctx)
	if err != nil {
		return 0, err
	}
	defer s.dropBroken()
	pc := conn.Conn().PgConn()
	rollback := func() {
		if !pc.IsClosed() && pc.TxStatus() != 'I' {
			_ = execSimple(context.WithoutCancel(ctx), pc, "ROLLBACK")
		}
	}
	defer func() {
		if err != nil {
			rollback()
		}
	}()
	if err := s.beginLocked(ctx, pc); err != nil {
		return 0, fmt.Errorf("begin copy: %w", err)
	}
	t := s.table
	var empty bool
	if err := conn.QueryRow(ctx, "SELECT NOT EXISTS (SELECT 1 FROM "+t.Ident()+")").Scan(&empty); err != nil {
		return 0, fmt.Errorf("check chat table: %w", err)
	}
	merge := !empty
	if empty {
		copySQL := fmt.Sprintf("COPY %s (%s) FROM STDIN%s", t.Ident(), t.ColumnList(), copyFormat(t))
		if len(copyOuts) > 1 {
			rows, err = s.pipes(ctx, copyOuts, copySQL)
		} else {
			rows, err = s.pipe(ctx, pc, copyOuts[0], copySQL)
		}
		if err != nil && !keyed.RowRejected(err) {
			return 0, err
		}
		if err != nil {
			s.log.Warn("chat database refused a row of the first copy; copying again through a staging table to isolate it", "err", err)
			rollback()
			if err := s.beginLocked(ctx, pc); err != nil {
				return 0, fmt.Errorf("begin copy: %w", err)
			}
			merge = true
		}
	} else {
		s.log.Info("chat table already has rows; merging the copy into it", "table", t.String())
	}
	if merge {
		if rows, err = s.merge(ctx, pc, copyOuts); err != nil {
			return 0, err
		}
	}
	if cp != (change.Checkpoint{}) {
		if _, err := pc.ExecStatement(ctx, s.stmts[stmtCheckpoint], checkpointParams(s.opts.Slot, cp), nil, nil).Close(); err != nil {
			return 0, fmt.Errorf("store checkpoint: %w", err)
		}
	}
	if err := execSimple(ctx, pc, "COMMIT"); err != nil {
		return 0, fmt.Errorf("commit copy: %w", err)
	}
	s.Stats.LSN.Store(uint64(cp.LSN))
	s.dur.known(cp, true)
	return rows, nil
}

// pipes runs each copyOut into the chat COPY on a connection of its own,
// all at once; each COPY commits when its part ends. The first failure
// cancels the others.
func (s *Sink) pipes(ctx context.Context, copyOuts []change.CopyOut, copySQL string) (int64, error) {
	var rows atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	for _, out := range copyOuts {
		g.Go(func() error {
			c, err := s.pool.Acquire(gctx)
			if err != nil {
				return fmt.Errorf("connect to chat database: %w", err)
			}
			defer c.Release()
			n, err := s.pipe(gctx, c.Conn().PgConn(), out, copySQL)
			rows.Add(n)
			return err
		})
	}
	err := g.Wait()
	return rows.Load(), err
}

// pipe runs copyOut into the chat COPY through an in-memory pipe.
func (s *Sink) pipe(ctx context.Context, pc *pgconn.PgConn, copyOut change.CopyOut, copySQL string) (int64, error) {
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

// Empty reports whether the chat table has no rows.
func (s *Sink) Empty(ctx context.Context) (bool, error) {
	var empty bool
	if err := s.pool.QueryRow(ctx, "SELECT NOT EXISTS (SELECT 1 FROM "+s.table.Ident()+")").Scan(&empty); err != nil {
		return false, fmt.Errorf("check chat table: %w", err)
	}
	return empty, nil
}
