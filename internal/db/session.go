package db

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// SharedSessionError reports that connections to a DSN do not each get a
// server session of their own: a pooler in transaction or statement mode
// (PgBouncer's pool_mode, most hosted poolers' default) hands one server
// session to many clients, one transaction or statement at a time.
type SharedSessionError struct {
	Mode string // "transaction" or "statement"
	How  string // what the probe saw
}

func (e *SharedSessionError) Error() string {
	return "connections through it share server sessions between clients (" + e.How + "): a pooler in " + e.Mode +
		" mode, such as PgBouncer's pool_mode = " + e.Mode + ". cdc needs a session of its own: its session settings, " +
		"prepared statements and leader lock would otherwise leak to other clients or hold nothing. " +
		"Point it at PostgreSQL's own port, or at a pool in session mode"
}

// CheckSession finds out whether dsn gives each connection a server
// session of its own, as a direct connection or a session-mode pooler
// does. It opens two connections: the first reads its backend pid, the
// second begins a transaction and reads its own, then the first reads
// its pid again. A pooler sharing sessions hands the first connection's
// idle server to the second (PgBouncer reuses the most recently released
// server), or moves the first to another server while the second holds
// its old one; a statement-mode pooler refuses the transaction. The
// probe sets nothing and uses the simple protocol, so it leaves neither a
// setting nor a prepared statement on a shared server; call it before
// any connection with TextSettings is opened to dsn. It returns a *SharedSessionError when sessions are
// shared, nil when not, and other errors as they come.
func CheckSession(ctx context.Context, dsn string) error {
	a, err := connect(ctx, dsn, false)
	if err != nil {
		return err
	}
	defer a.Close(context.Background())
	b, err := connect(ctx, dsn, false)
	if err != nil {
		return err
	}
	defer b.Close(context.Background())
	first, err := backendPID(ctx, a)
	if err != nil {
		return err
	}
	tx, err := b.Begin(ctx)
	if err != nil {
		return statementMode(err)
	}
	defer func() { _ = tx.Rollback(context.Background()) }()
	other, err := backendPID(ctx, tx)
	if err != nil {
		return statementMode(err)
	}
	again, err := backendPID(ctx, a)
	if err != nil {
		return err
	}
	switch {
	case other == first:
		return &SharedSessionError{Mode: "transaction", How: fmt.Sprintf("a second connection was handed the first one's server session, pid %d", first)}
	case again != first:
		return &SharedSessionError{Mode: "transaction", How: fmt.Sprintf("one connection ran on server session %d, then on %d", first, again)}
	}
	return nil
}

// statementMode turns a statement-mode pooler's refusal of a transaction
// block into a *SharedSessionError.
func statementMode(err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && strings.Contains(pgErr.Message, "statement pooling mode") {
		return &SharedSessionError{Mode: "statement", How: "it refused a transaction block: " + pgErr.Message}
	}
	return err
}

type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

func backendPID(ctx context.Context, q querier) (int32, error) {
	var pid int32
	if err := q.QueryRow(ctx, "SELECT pg_backend_pid()", pgx.QueryExecModeSimpleProtocol).Scan(&pid); err != nil {
		return 0, fmt.Errorf("read backend pid: %w", err)
	}
	return pid, nil
}
