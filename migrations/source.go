package migrations

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/myusta/cdc/internal/config"
	"github.com/myusta/cdc/internal/schema"
)

// Spec is what cdc migrate converges the two databases to.
type Spec struct {
	SourceTable string   // schema-qualified
	ChatTable   string   // schema-qualified
	Columns     []string // SYNC_COLUMNS
	Key         string
	UpdatedAt   string
	Publication string
}

// SpecFor is the Spec of a configuration.
func SpecFor(cfg *config.Config) Spec {
	return Spec{
		SourceTable: cfg.SourceTable, ChatTable: cfg.ChatTable, Columns: cfg.Columns,
		Key: cfg.KeyColumn, UpdatedAt: cfg.UpdatedAtColumn, Publication: cfg.PublicationName,
	}
}

// EnsurePublication creates the publication for the source table with the
// synced columns as its column list, or corrects the column list of an
// existing one. It reports what it did.
func EnsurePublication(ctx context.Context, pool *pgxpool.Pool, spec Spec) (string, error) {
	t, err := schema.Load(ctx, pool, spec.SourceTable, spec.Columns, spec.Key, spec.UpdatedAt)
	if err != nil {
		return "", fmt.Errorf("source table: %w", err)
	}
	pub := pgx.Identifier{spec.Publication}.Sanitize()
	target := fmt.Sprintf("%s (%s)", t.Ident(), t.ColumnList())
	var allTables bool
	err = pool.QueryRow(ctx, "SELECT puballtables FROM pg_publication WHERE pubname = $1", spec.Publication).Scan(&allTables)
	if errors.Is(err, pgx.ErrNoRows) {
		_, err = pool.Exec(ctx, fmt.Sprintf("CREATE PUBLICATION %s FOR TABLE %s WITH (publish = 'insert, update, delete, truncate')", pub, target))
		if err != nil {
			return "", fmt.Errorf("create publication %s: %w", spec.Publication, err)
		}
		return fmt.Sprintf("created publication %s for %s", spec.Publication, target), nil
	}
	if err != nil {
		return "", fmt.Errorf("read publication %s: %w", spec.Publication, err)
	}
	if allTables {
		return "", fmt.Errorf("publication %s is FOR ALL TABLES and would publish secret columns: drop it or set PUBLICATION_NAME to another name", spec.Publication)
	}
	cols, _, err := schema.PublishedColumns(ctx, pool, spec.Publication, t)
	if err != nil {
		return "", fmt.Errorf("read publication %s: %w", spec.Publication, err)
	}
	want := slices.Sorted(slices.Values(spec.Columns))
	if slices.Equal(slices.Sorted(slices.Values(cols)), want) {
		return "", nil
	}
	if _, err := pool.Exec(ctx, fmt.Sprintf("ALTER PUBLICATION %s SET TABLE %s", pub, target)); err != nil {
		return "", fmt.Errorf("set publication %s column list: %w", spec.Publication, err)
	}
	return fmt.Sprintf("publication %s now publishes %s (was: %s)", spec.Publication, target, strings.Join(cols, ", ")), nil
}

// EnsureChatTable creates the chat table when it does not exist, with the
// source's column types for the synced columns, its primary key, and an
// index on the updated_at column for the reconciler. An existing table is
// left alone. It reports whether it created the table.
func EnsureChatTable(ctx context.Context, source, chat *pgxpool.Pool, spec Spec) (bool, error) {
	var exists bool
	if err := chat.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", spec.ChatTable).Scan(&exists); err != nil {
		return false, fmt.Errorf("look up chat table: %w", err)
	}
	if exists {
		return false, nil
	}
	src, err := schema.Load(ctx, source, spec.SourceTable, spec.Columns, spec.Key, spec.UpdatedAt)
	if err != nil {
		return false, fmt.Errorf("source table: %w", err)
	}
	schemaName, name, _ := strings.Cut(spec.ChatTable, ".")
	ident := pgx.Identifier{schemaName, name}.Sanitize()
	var defs []string
	for _, c := range src.Columns {
		typ := c.TypeName
		if c.Kind == "e" {
			typ = "text" // the enum type lives on the source only
		}
		def := schema.Quote(c.Name) + " " + typ
		if c.NotNull {
			def += " NOT NULL"
		}
		defs = append(defs, def)
	}
	defs = append(defs, "PRIMARY KEY ("+schema.Quote(spec.Key)+")")
	ddl := fmt.Sprintf("CREATE SCHEMA IF NOT EXISTS %s; CREATE TABLE %s (\n  %s\n); CREATE INDEX %s ON %s (%s)",
		pgx.Identifier{schemaName}.Sanitize(), ident, strings.Join(defs, ",\n  "),
		pgx.Identifier{name + "_" + spec.UpdatedAt + "_idx"}.Sanitize(), ident, schema.Quote(spec.UpdatedAt))
	if _, err := chat.Exec(ctx, ddl); err != nil {
		return false, fmt.Errorf("create chat table %s: %w", spec.ChatTable, err)
	}
	return true, nil
}

// DropPublication removes cdc's publication if it exists. It reports what
// it did.
func DropPublication(ctx context.Context, pool *pgxpool.Pool, spec Spec) (string, error) {
	var n int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM pg_publication WHERE pubname = $1", spec.Publication).Scan(&n); err != nil {
		return "", fmt.Errorf("look up publication %s: %w", spec.Publication, err)
	}
	if n == 0 {
		return "", nil
	}
	if _, err := pool.Exec(ctx, "DROP PUBLICATION "+pgx.Identifier{spec.Publication}.Sanitize()); err != nil {
		return "", fmt.Errorf("drop publication %s: %w", spec.Publication, err)
	}
	return "dropped publication " + spec.Publication, nil
}
