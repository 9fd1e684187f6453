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

// GeneratedColumn is a synced source column whose value its server
// computes (GENERATED ALWAYS AS … STORED, or VIRTUAL from PostgreSQL 18).
type GeneratedColumn struct {
	Name    string
	Virtual bool   // computed when read, never stored
	Expr    string // the generation expression, as pg_get_expr shows it
}

// GeneratedColumns lists t's synced columns that are generated, in t's
// column order.
func GeneratedColumns(ctx context.Context, q schema.Querier, t *schema.Table) ([]GeneratedColumn, error) {
	rows, err := q.Query(ctx, `SELECT a.attname, a.attgenerated = 'v', COALESCE(pg_get_expr(d.adbin, d.adrelid), '')
FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = $1 AND a.attname = ANY($2) AND a.attgenerated IN ('s', 'v') AND NOT a.attisdropped
ORDER BY array_position($2, a.attname::text)`, t.OID, t.Names())
	if err != nil {
		return nil, fmt.Errorf("read generated columns of %s: %w", t, err)
	}
	var out []GeneratedColumn
	var c GeneratedColumn
	if _, err := pgx.ForEachRow(rows, []any{&c.Name, &c.Virtual, &c.Expr}, func() error {
		out = append(out, c)
		return nil
	}); err != nil {
		return nil, fmt.Errorf("read generated columns of %s: %w", t, err)
	}
	return out, nil
}

// GeneratedError reports synced source columns that a publication cannot
// carry: generated columns before PostgreSQL 18, virtual generated columns
// on any version.
type GeneratedError struct {
	Table   *schema.Table
	Version int // server_version_num
	Columns []GeneratedColumn
}

// Cause says which columns the source cannot publish and why.
func (e *GeneratedError) Cause() string {
	defs := make([]string, len(e.Columns))
	for i, c := range e.Columns {
		kind := "STORED"
		if c.Virtual {
			kind = "VIRTUAL"
		}
		defs[i] = fmt.Sprintf("%s GENERATED ALWAYS AS (%s) %s", ident.Display(c.Name), c.Expr, kind)
	}
	why := fmt.Sprintf("PostgreSQL %d cannot publish generated columns (18 can publish stored ones)", e.Version/10000)
	if e.Version >= 180000 {
		why = "PostgreSQL cannot publish virtual generated columns"
	}
	verb := "is a generated column"
	if len(e.Columns) > 1 {
		verb = "are generated columns"
	}
	return fmt.Sprintf("%s %s of the source table %s (%s), and %s", e.names(), verb, e.Table, strings.Join(defs, "; "), why)
}

// Fix says what to do instead: let chat compute the column.
func (e *GeneratedError) Fix() string {
	fix := fmt.Sprintf("leave %s out of SYNC_COLUMNS and let chat compute it: add it to chat's table as a generated column with the same expression "+
		"(ALTER TABLE … ADD COLUMN … GENERATED ALWAYS AS (…) STORED); cdc writes only the synced columns and leaves chat's other columns, generated ones included, to chat", e.names())
	if e.Version >= 180000 {
		return fix + "; or define it STORED on the source"
	}
	return fix + "; or upgrade the source to PostgreSQL 18, which publishes stored generated columns"
}

func (e *GeneratedError) names() string {
	names := make([]string, len(e.Columns))
	for i, c := range e.Columns {
		names[i] = ident.Display(c.Name)
	}
	return strings.Join(names, ", ")
}

func (e *GeneratedError) Error() string { return e.Cause() + ": " + e.Fix() }

// CheckPublishable returns a *GeneratedError when SYNC_COLUMNS names
// generated columns of t that the source's publication cannot carry.
func CheckPublishable(ctx context.Context, q schema.Querier, t *schema.Table) error {
	gen, err := GeneratedColumns(ctx, q, t)
	if err != nil || len(gen) == 0 {
		return err
	}
	var version int
	if err := q.QueryRow(ctx, "SELECT current_setting('server_version_num')::int").Scan(&version); err != nil {
		return fmt.Errorf("read source version: %w", err)
	}
	bad := slices.DeleteFunc(gen, func(c GeneratedColumn) bool { return version >= 180000 && !c.Virtual })
	if len(bad) == 0 {
		return nil
	}
	return &GeneratedError{Table: t, Version: version, Columns: bad}
}
