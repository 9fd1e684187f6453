package migrations

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/myusta/cdc/internal/config"
	"github.com/myusta/cdc/internal/ident"
	"github.com/myusta/cdc/internal/schema"
)

// Spec is what cdc migrate converges the two databases to.
type Spec struct {
	SourceTable ident.Table
	ChatTable   ident.Table
	Columns     []string // SYNC_COLUMNS, source names
	ChatColumns []string // their chat names, in the same order
	Key         []string // KEY_COLUMNS (source names); nil: the primary key
	UpdatedAt   string
	Publication string
}

// SpecFor is the Spec of a configuration.
func SpecFor(cfg *config.Config) Spec {
	return Spec{
		SourceTable: cfg.SourceTable, ChatTable: cfg.ChatTable, Columns: cfg.Columns, ChatColumns: cfg.ChatColumns,
		Key: cfg.KeyColumns, UpdatedAt: cfg.UpdatedAtColumn, Publication: cfg.PublicationName,
	}
}

// Source is what to load of the source table.
func (s Spec) Source() schema.Spec {
	return schema.Spec{Table: s.SourceTable, Columns: s.Columns, UpdatedAt: s.UpdatedAt, Key: s.Key}
}

// Chat is what to load of the chat table, whose key is src's key mapped to
// chat's names.
func (s Spec) Chat(src *schema.Table) schema.Spec {
	key := make([]string, len(src.Key))
	for i, k := range src.Key {
		key[i] = s.ChatColumns[k]
	}
	return schema.Spec{Table: s.ChatTable, Columns: s.ChatColumns, UpdatedAt: s.chatName(s.UpdatedAt), Key: key}
}

// LoadTables describes both tables and matches them (schema.Match), as
// cdc run does before it starts, for tools that need no preflight messages.
func LoadTables(ctx context.Context, source, chat schema.Querier, spec Spec, want schema.Format) (src, dst *schema.Table, err error) {
	if src, err = schema.Load(ctx, source, spec.Source()); err != nil {
		return nil, nil, fmt.Errorf("source table: %w", err)
	}
	if dst, err = schema.Load(ctx, chat, spec.Chat(src)); err != nil {
		return nil, nil, fmt.Errorf("chat table: %w", err)
	}
	if err := schema.Match(ctx, source, chat, src, dst, want); err != nil {
		return nil, nil, err
	}
	return src, dst, nil
}

func (s Spec) chatName(col string) string {
	for i, c := range s.Columns {
		if c == col {
			return s.ChatColumns[i]
		}
	}
	return col
}

// EnsurePublication creates the publication for the source table with the
// synced columns as its column list, or corrects the column list of an
// existing one. It reports what it did.
func EnsurePublication(ctx context.Context, pool *pgxpool.Pool, spec Spec) (string, error) {
	t, err := schema.Load(ctx, pool, spec.Source())
	if err != nil {
		return "", fmt.Errorf("source table: %w", err)
	}
	pub := ident.Quote(spec.Publication)
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
	return fmt.Sprintf("publication %s now publishes %s (was: %s)", ident.Display(spec.Publication), target, ident.DisplayList(cols)), nil
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
	if _, err := pool.Exec(ctx, "DROP PUBLICATION "+ident.Quote(spec.Publication)); err != nil {
		return "", fmt.Errorf("drop publication %s: %w", spec.Publication, err)
	}
	return "dropped publication " + spec.Publication, nil
}
