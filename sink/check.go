package sink

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/myusta/cdc/change"
	"github.com/myusta/cdc/internal/keyed"
	"github.com/myusta/cdc/internal/schema"
)

// Check prepares every statement the sink will run on chat, on its writer
// connection, so that a table it cannot write fails at start rather than
// with the first change. A refusal is a *change.CheckError.
func (s *Sink) Check(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.waitIdle(ctx); err != nil {
		return err
	}
	conn, err := s.writer(ctx)
	if err != nil {
		return checkError("prepare the chat writer's statements", err)
	}
	pc := conn.Conn().PgConn()
	sql, oids := keyed.ReadRowsSQL(s.table)
	if err := prepare(ctx, pc, "read chat rows", sql, oids); err != nil {
		return err
	}
	// The merge of a first copy stages into a temporary table first.
	if err := execSimple(ctx, pc, fmt.Sprintf("BEGIN; CREATE TEMP TABLE %s (cdc_n bigint GENERATED ALWAYS AS IDENTITY, %s) ON COMMIT DROP",
		snapshotTable, stageColumns(s.table))); err != nil {
		s.dropBroken()
		return checkError("create the first copy's staging table", err)
	}
	err = prepare(ctx, pc, "merge a first copy into chat", upsertFromSnapshot(s.table), nil)
	if rerr := execSimple(ctx, pc, "ROLLBACK"); rerr != nil && err == nil {
		err = rerr
	}
	s.dropBroken()
	return err
}

// CheckSource prepares the statements that read source table t.
func CheckSource(ctx context.Context, pool *pgxpool.Pool, t *schema.Table) error {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	sql, oids := keyed.ReadRowsSQL(t)
	return prepare(ctx, conn.Conn().PgConn(), "read source rows", sql, oids)
}

// prepare parses and plans sql as an unnamed statement.
func prepare(ctx context.Context, pc *pgconn.PgConn, what, sql string, oids []uint32) error {
	if _, err := pc.Prepare(ctx, "", sql, oids); err != nil {
		return checkError(what, err)
	}
	return nil
}

// checkError marks err as a change.CheckError when the server refused the
// statement; connection problems stay as they are (retryable).
func checkError(what string, err error) error {
	var pgErr *pgconn.PgError
	var ce *change.CheckError
	if errors.As(err, &ce) || !errors.As(err, &pgErr) {
		return err
	}
	switch pgErr.Code[:2] {
	case "42", "0A", "22", "23":
		return &change.CheckError{What: what, Err: err}
	}
	return err
}
