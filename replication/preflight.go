package replication

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/myusta/cdc/internal/schema"
	"github.com/myusta/cdc/migrations"
)

// PreflightError is a problem with the source database's setup that cdc
// cannot work around: the message names the cause and the fix.
type PreflightError struct {
	Cause string
	Fix   string
}

func (e *PreflightError) Error() string { return e.Cause + ": " + e.Fix }

// Source describes what the stream reads on the source database.
type Source struct {
	Table       string   // schema-qualified
	Columns     []string // synced columns, the publication's column list
	Key         string
	UpdatedAt   string
	Publication string
	Secret      []string // columns that must never be published
}

// Preflight checks that the source can be replicated as configured and
// returns the source table's description. Every failure it can name is a
// *PreflightError.
func Preflight(ctx context.Context, pool *pgxpool.Pool, src Source) (*schema.Table, error) {
	var version int
	var walLevel, user string
	var replication bool
	err := pool.QueryRow(ctx, `SELECT current_setting('server_version_num')::int, current_setting('wal_level'), current_user,
       (SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = current_user)
         OR (EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rds_replication') AND pg_has_role('rds_replication', 'member'))`).Scan(&version, &walLevel, &user, &replication)
	if err != nil {
		return nil, fmt.Errorf("read source settings: %w", err)
	}
	if version < 150000 {
		return nil, &PreflightError{
			Cause: fmt.Sprintf("the source runs PostgreSQL %d.%d; replication mode needs 15 or newer (publication column lists keep secret columns on the source)", version/10000, version%100),
			Fix:   "upgrade the source, or set SYNC_MODE=notify",
		}
	}
	if walLevel != "logical" {
		return nil, &PreflightError{
			Cause: fmt.Sprintf("wal_level is %q on the source, logical replication needs \"logical\"", walLevel),
			Fix:   "run ALTER SYSTEM SET wal_level = logical and restart PostgreSQL (or set SYNC_MODE=notify)",
		}
	}
	if !replication {
		return nil, &PreflightError{
			Cause: fmt.Sprintf("role %q lacks the REPLICATION attribute", user),
			Fix:   fmt.Sprintf("run ALTER ROLE %s REPLICATION as a superuser (on RDS: GRANT rds_replication TO %s), or set SYNC_MODE=notify", pgx.Identifier{user}.Sanitize(), pgx.Identifier{user}.Sanitize()),
		}
	}
	table, err := LoadTable(ctx, pool, src, "source", "check SOURCE_TABLE and the database in the DSN")
	if err != nil {
		return nil, err
	}
	var canSelect bool
	if err := pool.QueryRow(ctx, "SELECT has_table_privilege($1, 'SELECT')", table.Ident()).Scan(&canSelect); err != nil {
		return nil, fmt.Errorf("check privileges: %w", err)
	}
	if !canSelect {
		return nil, &PreflightError{
			Cause: fmt.Sprintf("role %q cannot SELECT from %s", user, table),
			Fix:   fmt.Sprintf("run GRANT SELECT ON %s TO %s", table.Ident(), pgx.Identifier{user}.Sanitize()),
		}
	}
	if err := checkPublication(ctx, pool, src, table); err != nil {
		return nil, err
	}
	return table, nil
}

// LoadTable describes the synced table on one side ("source" or "chat"),
// turning catalog problems into PreflightErrors; fixMissing is the advice
// when the table does not exist.
func LoadTable(ctx context.Context, q schema.Querier, src Source, side, fixMissing string) (*schema.Table, error) {
	t, err := schema.Load(ctx, q, src.Table, src.Columns, src.Key, src.UpdatedAt)
	var missing *schema.MissingError
	var noPK *schema.NoPrimaryKeyError
	var noCols *schema.MissingColumnsError
	switch {
	case errors.As(err, &missing):
		return nil, &PreflightError{
			Cause: fmt.Sprintf("table %s does not exist on the %s database", src.Table, side),
			Fix:   fixMissing,
		}
	case errors.As(err, &noPK):
		return nil, &PreflightError{
			Cause: fmt.Sprintf("table %s on the %s database has no primary key on %q; updates and deletes cannot be decoded without one", src.Table, side, src.Key),
			Fix:   fmt.Sprintf("run ALTER TABLE %s ADD PRIMARY KEY (%s), or set KEY_COLUMN", src.Table, src.Key),
		}
	case errors.As(err, &noCols):
		return nil, &PreflightError{Cause: err.Error() + " on the " + side + " database", Fix: "check SYNC_COLUMNS"}
	case err != nil:
		return nil, err
	}
	return t, nil
}

func checkPublication(ctx context.Context, pool *pgxpool.Pool, src Source, table *schema.Table) error {
	missing := &PreflightError{
		Cause: fmt.Sprintf("publication %q does not exist on the source", src.Publication),
		Fix:   "run cdc migrate",
	}
	var exists bool
	if err := pool.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)", src.Publication).Scan(&exists); err != nil {
		return fmt.Errorf("check publication: %w", err)
	}
	if !exists {
		return missing
	}
	cols, ok, err := schema.PublishedColumns(ctx, pool, src.Publication, table)
	if err != nil {
		return fmt.Errorf("check publication: %w", err)
	}
	if !ok {
		missing.Cause = fmt.Sprintf("publication %q does not include %s", src.Publication, table)
		return missing
	}
	for _, c := range cols {
		if slices.Contains(src.Secret, c) {
			return &PreflightError{
				Cause: fmt.Sprintf("publication %q publishes the secret column %q", src.Publication, c),
				Fix:   "run cdc migrate to set the publication's column list to SYNC_COLUMNS",
			}
		}
	}
	want := slices.Clone(src.Columns)
	slices.Sort(want)
	got := slices.Clone(cols)
	slices.Sort(got)
	if !slices.Equal(want, got) {
		return &PreflightError{
			Cause: fmt.Sprintf("publication %q publishes (%s) but SYNC_COLUMNS is (%s)", src.Publication, strings.Join(got, ", "), strings.Join(want, ", ")),
			Fix:   "run cdc migrate",
		}
	}
	return nil
}

// PreflightNotify checks that the source can be followed in notify mode
// and returns the source table's description.
func PreflightNotify(ctx context.Context, pool *pgxpool.Pool, src Source) (*schema.Table, error) {
	table, err := LoadTable(ctx, pool, src, "source", "check SOURCE_TABLE and the database in the DSN")
	if err != nil {
		return nil, err
	}
	var user string
	var canSelect bool
	if err := pool.QueryRow(ctx, "SELECT current_user, has_table_privilege($1, 'SELECT')", table.Ident()).Scan(&user, &canSelect); err != nil {
		return nil, fmt.Errorf("check privileges: %w", err)
	}
	if !canSelect {
		return nil, &PreflightError{
			Cause: fmt.Sprintf("role %q cannot SELECT from %s", user, table),
			Fix:   fmt.Sprintf("run GRANT SELECT ON %s TO %s", table.Ident(), pgx.Identifier{user}.Sanitize()),
		}
	}
	ok, err := migrations.NotifyTriggerExists(ctx, pool, table.String())
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, &PreflightError{
			Cause: fmt.Sprintf("the notify trigger %s is not installed (or disabled) on %s", migrations.NotifyTrigger, table),
			Fix:   "run cdc migrate with SYNC_MODE=notify",
		}
	}
	return table, nil
}
