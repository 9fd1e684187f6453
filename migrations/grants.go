package migrations

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/myusta/cdc/internal/ident"
)

// chatTables are cdc's own tables in the chat database that cdc run writes.
var chatTables = []string{"cdc_checkpoint", "sync_errors", "cdc_columns", "cdc_source"}

// roleInfo reads whether role exists and has REPLICATION.
func roleInfo(ctx context.Context, pool *pgxpool.Pool, role string) (replication bool, err error) {
	err = pool.QueryRow(ctx, "SELECT rolreplication FROM pg_roles WHERE rolname = $1", role).Scan(&replication)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, fmt.Errorf("role %s does not exist: create it first (README, Least privilege)", ident.Display(role))
	}
	if err != nil {
		return false, fmt.Errorf("look up role %s: %w", role, err)
	}
	return replication, nil
}

// GrantSource gives role what cdc run needs on the source and nothing more:
// SELECT on the source table (and USAGE on its schema). Replication mode
// also needs the REPLICATION attribute, which only a superuser (or, on
// managed services, their replication role) can give; the returned note
// says so when it is missing.
func GrantSource(ctx context.Context, pool *pgxpool.Pool, spec Spec, role string, replicationMode bool) (string, error) {
	repl, err := roleInfo(ctx, pool, role)
	if err != nil {
		return "", err
	}
	r := ident.Quote(role)
	sql := fmt.Sprintf("GRANT USAGE ON SCHEMA %s TO %s; GRANT SELECT ON %s TO %s",
		ident.Quote(spec.SourceTable.Schema), r, spec.SourceTable.Quoted(), r)
	if _, err := pool.Exec(ctx, sql); err != nil {
		return "", fmt.Errorf("grant to %s on the source: %w", ident.Display(role), err)
	}
	msg := fmt.Sprintf("granted %s SELECT on %s", ident.Display(role), spec.SourceTable)
	if replicationMode && !repl {
		msg += fmt.Sprintf("; it lacks REPLICATION, which replication mode needs: run ALTER ROLE %s REPLICATION as a superuser (on RDS: GRANT rds_replication TO %s)", r, r)
	}
	return msg, nil
}

// GrantChat gives role what cdc run needs on chat and nothing more: read
// and write the chat table and cdc's own tables, use sync_errors' id
// sequence. (Temporary tables, which the writer stages large batches in,
// are allowed to every role by default.)
func GrantChat(ctx context.Context, pool *pgxpool.Pool, spec Spec, role string) (string, error) {
	if _, err := roleInfo(ctx, pool, role); err != nil {
		return "", err
	}
	r := ident.Quote(role)
	tables := append([]string{spec.ChatTable.Quoted()}, chatTables...)
	sql := fmt.Sprintf(`GRANT USAGE ON SCHEMA %s TO %s;
GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON %s TO %s;
GRANT USAGE, SELECT ON SEQUENCE sync_errors_id_seq TO %s;
GRANT SELECT ON %s TO %s`,
		ident.Quote(spec.ChatTable.Schema), r, strings.Join(tables, ", "), r, r, VersionTable, r)
	if _, err := pool.Exec(ctx, sql); err != nil {
		return "", fmt.Errorf("grant to %s on chat: %w", ident.Display(role), err)
	}
	return fmt.Sprintf("granted %s read and write on %s and cdc's tables", ident.Display(role), strings.Join(append([]string{spec.ChatTable.String()}, chatTables...), ", ")), nil
}
