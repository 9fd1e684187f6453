// Package schema reads the catalog description of the synced table on
// either side, locates its key, and decides with Match how values travel
// between the two clusters: types are compared by schema-qualified name,
// never by OID, because source and chat are separate servers.
package schema

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/myusta/cdc/internal/ident"
)

// Column is one synced column as its database defines it.
type Column struct {
	Name    string
	Num     int16    // attnum: the column's identity across renames
	TypeOID uint32   // the declared type (a domain stays a domain): what Relation messages carry
	TypMod  int32    // the declared type's modifier (atttypmod)
	Type    TypeName // the declared type's name
	Display string   // format_type(): the declared type with its modifier, for messages and DDL
	NotNull bool
	Base    Base // the type the values have: a domain is resolved to its base type

	// Set by Match.

	Expr   string // SQL reading the column for comparison (and repairs)
	Cast   string // the declared type, unconstrained: what a text value is cast to
	ByHash bool   // hashed by value (same built-in type on both sides), not by text
}

// Table is the synced part of one table: the configured columns in
// configured order, with the key and version columns located.
type Table struct {
	ident.Table
	OID       uint32 // on this cluster: the table's identity across renames
	Columns   []Column
	Key       []int // indexes in Columns of the key columns, in key order
	UpdatedAt int   // index of the updated_at column in Columns
	// Identity is the replica identity (pg_class.relreplident: d default,
	// f full, i index, n nothing) and IdentityColumns its index's columns.
	Identity        byte
	IdentityColumns []string
	// Format is how values travel (set by Match).
	Format Format
}

// Spec names what to load.
type Spec struct {
	Table     ident.Table
	Columns   []string // synced columns, in order
	UpdatedAt string
	// Key names the key columns; nil means the primary key. Either way a
	// unique index on exactly these columns must exist.
	Key []string
}

// MissingError reports that the table itself does not exist.
type MissingError struct {
	Table ident.Table
	Hint  string // a table whose name differs only in case, if any
}

func (e *MissingError) Error() string {
	msg := "table " + e.Table.String() + " does not exist"
	if e.Hint != "" {
		msg += " (there is " + e.Hint + ": unquoted names are folded to lower case, quote the name to keep its case)"
	}
	return msg
}

// MissingColumnsError reports synced columns the table does not have.
type MissingColumnsError struct {
	Table   ident.Table
	Columns []string
	Hints   map[string]string // column -> a column whose name differs only in case
}

func (e *MissingColumnsError) Error() string {
	parts := make([]string, len(e.Columns))
	for i, c := range e.Columns {
		parts[i] = ident.Display(c)
		if h, ok := e.Hints[c]; ok {
			parts[i] += " (did you mean " + ident.Display(h) + "? unquoted names are folded to lower case)"
		}
	}
	return fmt.Sprintf("table %s has no column %s", e.Table, strings.Join(parts, ", "))
}

// NoKeyError reports that the key is not backed by a unique index.
type NoKeyError struct {
	Table ident.Table
	Key   []string // the configured key; nil when the primary key was wanted
}

func (e *NoKeyError) Error() string {
	if e.Key == nil {
		return fmt.Sprintf("table %s has no primary key", e.Table)
	}
	return fmt.Sprintf("table %s has no primary key or unique index on exactly (%s)", e.Table, ident.DisplayList(e.Key))
}

// Querier is the part of pgx.Conn and pgxpool.Pool that Load needs.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Load describes the columns of spec.Table and locates its key.
func Load(ctx context.Context, q Querier, spec Spec) (*Table, error) {
	t := &Table{Table: spec.Table, UpdatedAt: -1}
	var oid *uint32
	var identity, kind string
	err := q.QueryRow(ctx, "SELECT c.oid, c.relreplident::text, c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2",
		spec.Table.Schema, spec.Table.Name).Scan(&oid, &identity, &kind)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, &MissingError{Table: spec.Table, Hint: tableHint(ctx, q, spec.Table)}
	}
	if err != nil {
		return nil, fmt.Errorf("look up table %s: %w", spec.Table, err)
	}
	if kind != "r" {
		return nil, fmt.Errorf("%s is not a plain table (pg_class.relkind %q): cdc syncs a plain table (a partitioned table's changes are published per partition)", spec.Table, kind)
	}
	t.Identity, t.OID = identity[0], *oid
	all, err := readColumns(ctx, q, *oid)
	if err != nil {
		return nil, fmt.Errorf("read columns of %s: %w", spec.Table, err)
	}
	var missing []string
	for _, name := range spec.Columns {
		c, ok := all[name]
		if !ok {
			missing = append(missing, name)
			continue
		}
		if name == spec.UpdatedAt {
			t.UpdatedAt = len(t.Columns)
		}
		t.Columns = append(t.Columns, c)
	}
	if len(missing) > 0 {
		return nil, &MissingColumnsError{Table: spec.Table, Columns: missing, Hints: caseHints(missing, all)}
	}
	if t.UpdatedAt < 0 {
		return nil, fmt.Errorf("the updated_at column %s must be among the synced columns", ident.Display(spec.UpdatedAt))
	}
	uniques, pk, identCols, err := readIndexes(ctx, q, *oid)
	if err != nil {
		return nil, fmt.Errorf("read indexes of %s: %w", spec.Table, err)
	}
	if t.Identity == 'd' {
		identCols = pk
	}
	t.IdentityColumns = identCols
	key := spec.Key
	if key == nil {
		if pk == nil {
			return nil, &NoKeyError{Table: spec.Table}
		}
		key = pk
	} else if !hasUnique(uniques, key) {
		return nil, &NoKeyError{Table: spec.Table, Key: key}
	}
	for _, k := range key {
		i := t.Index(k)
		if i < 0 {
			return nil, &KeyNotSyncedError{Table: spec.Table, Key: key}
		}
		t.Key = append(t.Key, i)
	}
	return t, nil
}

// KeyNotSyncedError reports key columns that are not synced.
type KeyNotSyncedError struct {
	Table ident.Table
	Key   []string
}

func (e *KeyNotSyncedError) Error() string {
	return fmt.Sprintf("SYNC_COLUMNS must include the key of %s: (%s)", e.Table, ident.DisplayList(e.Key))
}

// Index is the position of column name in Columns, or -1.
func (t *Table) Index(name string) int {
	for i, c := range t.Columns {
		if c.Name == name {
			return i
		}
	}
	return -1
}

// columnsSQL reads every column with its declared and base type: domains
// are followed down to the type their values have.
const columnsSQL = `WITH RECURSIVE cols AS (
  SELECT a.attnum, a.attname, a.atttypid, a.atttypmod, a.attnotnull
  FROM pg_attribute a WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
), chain AS (
  SELECT attnum, atttypid AS oid, atttypmod AS typmod, 0 AS depth FROM cols
  UNION ALL
  SELECT c.attnum, t.typbasetype, t.typtypmod, c.depth + 1
  FROM chain c JOIN pg_type t ON t.oid = c.oid WHERE t.typtype = 'd'
), base AS (
  SELECT DISTINCT ON (attnum) attnum, oid, typmod FROM chain ORDER BY attnum, depth DESC
)
SELECT c.attname, c.attnum, c.atttypid, c.atttypmod, c.attnotnull, dn.nspname, d.typname, format_type(c.atttypid, c.atttypmod), d.typtype = 'd',
       b.oid, bn.nspname, bt.typname, format_type(b.oid, b.typmod), bt.typtype::text, bt.typcategory::text, bt.typarray,
       bt.typsend <> 0 AND bt.typreceive <> 0,
       COALESCE(st.typtype::text, ''), COALESCE(st.typcategory::text, '')
FROM cols c
JOIN pg_type d ON d.oid = c.atttypid JOIN pg_namespace dn ON dn.oid = d.typnamespace
JOIN base b ON b.attnum = c.attnum
JOIN pg_type bt ON bt.oid = b.oid JOIN pg_namespace bn ON bn.oid = bt.typnamespace
LEFT JOIN pg_range r ON bt.typtype = 'r' AND r.rngtypid = bt.oid
LEFT JOIN pg_type st ON st.oid = CASE WHEN bt.typcategory = 'A' THEN bt.typelem ELSE r.rngsubtype END`

func readColumns(ctx context.Context, q Querier, oid uint32) (map[string]Column, error) {
	rows, err := q.Query(ctx, columnsSQL, oid)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	all := map[string]Column{}
	for rows.Next() {
		var c Column
		var kind, cat, subKind, subCat string
		if err := rows.Scan(&c.Name, &c.Num, &c.TypeOID, &c.TypMod, &c.NotNull, &c.Type.Schema, &c.Type.Name, &c.Display, &c.Base.Domain,
			&c.Base.OID, &c.Base.Name.Schema, &c.Base.Name.Name, &c.Base.Display, &kind, &cat, &c.Base.ArrayOID,
			&c.Base.Binary, &subKind, &subCat); err != nil {
			return nil, err
		}
		c.Base.Kind, c.Base.Category = kind[0], cat[0]
		if subKind != "" {
			c.Base.SubKind, c.Base.SubCategory = subKind[0], subCat[0]
		}
		all[c.Name] = c
	}
	return all, rows.Err()
}

// readIndexes lists the table's unique indexes on plain columns (not
// partial), its primary key's columns, and the columns of the index its
// replica identity uses (if any).
func readIndexes(ctx context.Context, q Querier, oid uint32) (uniques [][]string, pk, identity []string, err error) {
	rows, err := q.Query(ctx, `SELECT i.indisprimary, i.indisreplident,
  ARRAY(SELECT a.attname FROM unnest(i.indkey) WITH ORDINALITY k(num, ord) JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.num ORDER BY k.ord)
FROM pg_index i WHERE i.indrelid = $1 AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL AND i.indisvalid
ORDER BY i.indisprimary DESC, i.indexrelid`, oid)
	if err != nil {
		return nil, nil, nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var primary, replident bool
		var cols []string
		if err := rows.Scan(&primary, &replident, &cols); err != nil {
			return nil, nil, nil, err
		}
		uniques = append(uniques, cols)
		if primary {
			pk = cols
		}
		if replident {
			identity = cols
		}
	}
	return uniques, pk, identity, rows.Err()
}

func hasUnique(uniques [][]string, key []string) bool {
	for _, u := range uniques {
		if sameSet(u, key) {
			return true
		}
	}
	return false
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	in := map[string]bool{}
	for _, x := range a {
		in[x] = true
	}
	for _, x := range b {
		if !in[x] {
			return false
		}
	}
	return true
}

// caseHints finds, for each missing column, one that differs only in case.
func caseHints(missing []string, all map[string]Column) map[string]string {
	hints := map[string]string{}
	for _, m := range missing {
		for name := range all {
			if strings.EqualFold(name, m) {
				hints[m] = name
			}
		}
	}
	return hints
}

// tableHint names a table that differs from t only in case ("" if none).
func tableHint(ctx context.Context, q Querier, t ident.Table) string {
	var s, n string
	err := q.QueryRow(ctx, `SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE lower(n.nspname) = lower($1) AND lower(c.relname) = lower($2) AND c.relkind = 'r' LIMIT 1`, t.Schema, t.Name).Scan(&s, &n)
	if err != nil {
		return ""
	}
	return ident.Table{Schema: s, Name: n}.String()
}

// Ident is the quoted schema-qualified table name.
func (t *Table) Ident() string { return t.Quoted() }

// Names lists the synced columns' names.
func (t *Table) Names() []string {
	names := make([]string, len(t.Columns))
	for i, c := range t.Columns {
		names[i] = c.Name
	}
	return names
}

// ColumnList is the quoted, comma-separated list of synced columns.
func (t *Table) ColumnList() string { return ident.QuoteList(t.Names()) }

// KeyColumns are the key columns, in key order.
func (t *Table) KeyColumns() []Column {
	out := make([]Column, len(t.Key))
	for i, k := range t.Key {
		out[i] = t.Columns[k]
	}
	return out
}

// KeyNames are the key columns' names, in key order.
func (t *Table) KeyNames() []string {
	out := make([]string, len(t.Key))
	for i, k := range t.Key {
		out[i] = t.Columns[k].Name
	}
	return out
}

// IsKey reports whether column i is part of the key.
func (t *Table) IsKey(i int) bool {
	for _, k := range t.Key {
		if k == i {
			return true
		}
	}
	return false
}

// Quote quotes one identifier.
func Quote(name string) string { return ident.Quote(name) }

// PublishedColumns returns the columns publication pub publishes of t; ok
// is false when t is not in the publication.
func PublishedColumns(ctx context.Context, q Querier, pub string, t *Table) (cols []string, ok bool, err error) {
	err = q.QueryRow(ctx, "SELECT attnames FROM pg_publication_tables WHERE pubname = $1 AND schemaname = $2 AND tablename = $3",
		pub, t.Schema, t.Name).Scan(&cols)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, false, nil
	}
	return cols, err == nil, err
}
