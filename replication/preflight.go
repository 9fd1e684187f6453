package replication

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/myusta/cdc/internal/ident"
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
	schema.Spec          // the table, its synced columns (the publication's column list) and key
	Publication string   // publication name
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
	if err := versionError(version); err != nil {
		return nil, err
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
	table, err := LoadTable(ctx, pool, src.Spec, "source", "check SOURCE_TABLE and the database in the DSN")
	if err != nil {
		return nil, err
	}
	if err := checkIdentity(table); err != nil {
		return nil, err
	}
	var canSelect bool
	if err := pool.QueryRow(ctx, "SELECT has_table_privilege($1, 'SELECT')", table.Ident()).Scan(&canSelect); err != nil {
		return nil, fmt.Errorf("check privileges: %w", err)
	}
	if !canSelect {
		return nil, &PreflightError{
			Cause: fmt.Sprintf("role %s cannot SELECT from %s", ident.Display(user), table),
			Fix:   fmt.Sprintf("run GRANT SELECT ON %s TO %s", table.Ident(), pgx.Identifier{user}.Sanitize()),
		}
	}
	if err := CheckGenerated(ctx, pool, table); err != nil {
		return nil, err
	}
	if err := checkPublication(ctx, pool, src, table); err != nil {
		return nil, err
	}
	return table, nil
}

// CheckSourceVersion refuses a source older than PostgreSQL 15 for
// replication mode with a *PreflightError.
func CheckSourceVersion(ctx context.Context, pool *pgxpool.Pool) error {
	var version int
	if err := pool.QueryRow(ctx, "SELECT current_setting('server_version_num')::int").Scan(&version); err != nil {
		return fmt.Errorf("read source version: %w", err)
	}
	if err := versionError(version); err != nil {
		return err
	}
	return nil
}

// CheckGenerated refuses, with a *PreflightError, generated columns of
// the source table t in SYNC_COLUMNS that replication mode cannot publish:
// stored ones before PostgreSQL 18 and virtual ones on any version (notify
// mode reads them with queries and needs no such check).
func CheckGenerated(ctx context.Context, q schema.Querier, t *schema.Table) error {
	var gen *migrations.GeneratedError
	if err := migrations.CheckPublishable(ctx, q, t); errors.As(err, &gen) {
		return &PreflightError{Cause: "SYNC_COLUMNS: " + gen.Cause(), Fix: gen.Fix()}
	} else if err != nil {
		return err
	}
	return nil
}

func versionError(version int) *PreflightError {
	if version >= 150000 {
		return nil
	}
	return &PreflightError{
		Cause: fmt.Sprintf("the source runs PostgreSQL %d.%d; replication mode needs 15 or newer (publication column lists keep secret columns on the source)", version/10000, version%100),
		Fix:   "upgrade the source, or set SYNC_MODE=notify",
	}
}

// LoadTable describes the synced table on one side ("source" or "chat"),
// turning catalog problems into PreflightErrors; fixMissing is the advice
// when the table does not exist.
func LoadTable(ctx context.Context, q schema.Querier, spec schema.Spec, side, fixMissing string) (*schema.Table, error) {
	t, err := schema.Load(ctx, q, spec)
	var missing *schema.MissingError
	var noKey *schema.NoKeyError
	var noCols *schema.MissingColumnsError
	var keyCols *schema.KeyNotSyncedError
	switch {
	case errors.As(err, &missing):
		return nil, &PreflightError{Cause: err.Error() + " on the " + side + " database", Fix: fixMissing}
	case errors.As(err, &noKey) && noKey.Key == nil:
		return nil, &PreflightError{
			Cause: fmt.Sprintf("table %s on the %s database has no primary key; cdc needs a key to apply updates and deletes", spec.Table, side),
			Fix:   fmt.Sprintf("run ALTER TABLE %s ADD PRIMARY KEY (…), or set KEY_COLUMNS to the columns of a unique index", spec.Table.Quoted()),
		}
	case errors.As(err, &noKey):
		return nil, &PreflightError{
			Cause: err.Error() + " on the " + side + " database",
			Fix:   fmt.Sprintf("create one (CREATE UNIQUE INDEX ON %s (%s)), or change KEY_COLUMNS", spec.Table.Quoted(), ident.QuoteList(noKey.Key)),
		}
	case errors.As(err, &noCols):
		return nil, &PreflightError{Cause: err.Error() + " on the " + side + " database", Fix: "check SYNC_COLUMNS"}
	case errors.As(err, &keyCols):
		return nil, &PreflightError{Cause: err.Error(), Fix: "add the key columns to SYNC_COLUMNS"}
	case err != nil:
		return nil, err
	}
	return t, nil
}

// checkIdentity checks that pgoutput sends the key of updated and deleted
// rows: the replica identity must be FULL or an index on the key.
func checkIdentity(t *schema.Table) error {
	key := t.KeyNames()
	switch {
	case t.Identity == 'f':
		return nil
	case t.Identity == 'n':
		return &PreflightError{
			Cause: fmt.Sprintf("table %s has REPLICA IDENTITY NOTHING: the source cannot publish its updates and deletes", t),
			Fix:   fmt.Sprintf("run ALTER TABLE %s REPLICA IDENTITY DEFAULT (or FULL)", t.Ident()),
		}
	case !sameSet(t.IdentityColumns, key):
		return &PreflightError{
			Cause: fmt.Sprintf("table %s's replica identity is (%s), not the key (%s): deletes would not carry the key", t, ident.DisplayList(t.IdentityColumns), ident.DisplayList(key)),
			Fix:   fmt.Sprintf("run ALTER TABLE %s REPLICA IDENTITY USING INDEX <a unique index on the key> (or FULL), or set KEY_COLUMNS to the replica identity's columns", t.Ident()),
		}
	}
	return nil
}

func sameSet(a, b []string) bool {
	return len(a) == len(b) && len(a) > 0 && !slices.ContainsFunc(a, func(x string) bool { return !slices.Contains(b, x) })
}

func checkPublication(ctx context.Context, pool *pgxpool.Pool, src Source, table *schema.Table) error {
	missing := &PreflightError{
		Cause: fmt.Sprintf("publication %s does not exist on the source", ident.Display(src.Publication)),
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
		missing.Cause = fmt.Sprintf("publication %s does not include %s", ident.Display(src.Publication), table)
		return missing
	}
	for _, c := range cols {
		if slices.Contains(src.Secret, c) {
			return &PreflightError{
				Cause: fmt.Sprintf("publication %s publishes the secret column %s", ident.Display(src.Publication), ident.Display(c)),
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
			Cause: fmt.Sprintf("publication %s publishes (%s) but SYNC_COLUMNS is (%s)", ident.Display(src.Publication), ident.DisplayList(got), ident.DisplayList(want)),
			Fix:   "run cdc migrate",
		}
	}
	return nil
}

// PreflightNotify checks that the source can be followed in notify mode
// and returns the source table's description.
func PreflightNotify(ctx context.Context, pool *pgxpool.Pool, src Source) (*schema.Table, error) {
	table, err := LoadTable(ctx, pool, src.Spec, "source", "check SOURCE_TABLE and the database in the DSN")
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
			Cause: fmt.Sprintf("role %s cannot SELECT from %s", ident.Display(user), table),
			Fix:   fmt.Sprintf("run GRANT SELECT ON %s TO %s", table.Ident(), pgx.Identifier{user}.Sanitize()),
		}
	}
	ok, err := migrations.NotifyTriggerExists(ctx, pool, table.Table)
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
