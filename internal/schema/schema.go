// Package schema reads the catalog description of the synced table on either
// side and checks that both sides can exchange values in binary form.
package schema

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
)

// Column is one synced column as its database defines it.
type Column struct {
	Name     string
	TypeOID  uint32 // the column's type; a domain is reported as its base type
	ArrayOID uint32 // the array type of TypeOID, for set-based writes
	TypeName string // format_type() of the base type, for messages and DDL
	NotNull  bool
	Kind     string // pg_type.typtype of the base type: b base, e enum, …
}

// Table is the synced part of one table: the configured columns in
// configured order, with the key and version columns located.
type Table struct {
	Schema, Name string
	Columns      []Column
	Key          int // index of the key column in Columns
	UpdatedAt    int // index of the updated_at column in Columns
}

// MissingError reports that the table itself does not exist.
type MissingError struct{ Table string }

func (e *MissingError) Error() string { return "table " + e.Table + " does not exist" }

// Querier is the part of pgx.Conn and pgxpool.Pool that Load needs.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Load describes the columns cols of table qualified ("schema.table") and
// checks that key is its single-column primary key.
func Load(ctx context.Context, q Querier, qualified string, cols []string, key, updatedAt string) (*Table, error) {
	schemaName, name, _ := strings.Cut(qualified, ".")
	t := &Table{Schema: schemaName, Name: name, Key: -1, UpdatedAt: -1}
	var oid *uint32
	if err := q.QueryRow(ctx, "SELECT to_regclass($1)::oid", t.Ident()).Scan(&oid); err != nil {
		return nil, fmt.Errorf("look up table %s: %w", qualified, err)
	}
	if oid == nil {
		return nil, &MissingError{Table: qualified}
	}
	rows, err := q.Query(ctx, `
SELECT a.attname,
       CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE a.atttypid END,
       bt.typarray,
       format_type(bt.oid, CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE a.atttypmod END),
       a.attnotnull,
       bt.typtype::text,
       COALESCE(pk.indkey IS NOT NULL AND pk.indnatts = 1 AND pk.indkey[0] = a.attnum, false)
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
JOIN pg_type bt ON bt.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE a.atttypid END
LEFT JOIN pg_index pk ON pk.indrelid = a.attrelid AND pk.indisprimary
WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped`, *oid)
	if err != nil {
		return nil, fmt.Errorf("read columns of %s: %w", qualified, err)
	}
	type found struct {
		Column
		isPK bool
	}
	all := map[string]found{}
	for rows.Next() {
		var f found
		if err := rows.Scan(&f.Name, &f.TypeOID, &f.ArrayOID, &f.TypeName, &f.NotNull, &f.Kind, &f.isPK); err != nil {
			rows.Close()
			return nil, fmt.Errorf("read columns of %s: %w", qualified, err)
		}
		all[f.Name] = f
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read columns of %s: %w", qualified, err)
	}
	var missing []string
	keyIsPK := false
	for i, c := range cols {
		f, ok := all[c]
		if !ok {
			missing = append(missing, c)
			continue
		}
		t.Columns = append(t.Columns, f.Column)
		switch c {
		case key:
			t.Key = i
			keyIsPK = f.isPK
		case updatedAt:
			t.UpdatedAt = i
		}
	}
	if len(missing) > 0 {
		return nil, &MissingColumnsError{Table: qualified, Columns: missing}
	}
	if t.Key < 0 || t.UpdatedAt < 0 {
		return nil, errors.New("key and updated_at columns must be among the synced columns")
	}
	if !keyIsPK {
		return nil, &NoPrimaryKeyError{Table: qualified, Key: key}
	}
	return t, nil
}

// MissingColumnsError reports synced columns the table does not have.
type MissingColumnsError struct {
	Table   string
	Columns []string
}

func (e *MissingColumnsError) Error() string {
	return fmt.Sprintf("table %s has no column %s", e.Table, strings.Join(e.Columns, ", "))
}

// NoPrimaryKeyError reports that the key column is not the table's
// single-column primary key.
type NoPrimaryKeyError struct{ Table, Key string }

func (e *NoPrimaryKeyError) Error() string {
	return fmt.Sprintf("table %s has no single-column primary key on %q", e.Table, e.Key)
}

// Ident is the quoted schema-qualified table name.
func (t *Table) Ident() string { return pgx.Identifier{t.Schema, t.Name}.Sanitize() }

// String is the unquoted schema-qualified name.
func (t *Table) String() string { return t.Schema + "." + t.Name }

// ColumnList is the quoted, comma-separated list of synced columns.
func (t *Table) ColumnList() string {
	names := make([]string, len(t.Columns))
	for i, c := range t.Columns {
		names[i] = Quote(c.Name)
	}
	return strings.Join(names, ", ")
}

// KeyColumn is the key column.
func (t *Table) KeyColumn() Column { return t.Columns[t.Key] }

// Quote quotes one identifier.
func Quote(name string) string { return pgx.Identifier{name}.Sanitize() }

// textLike are base types whose binary form is the UTF-8 text itself.
var textLike = map[uint32]bool{25: true, 1043: true, 1042: true}

// Compatible reports whether every value of src can be written into dst in
// PostgreSQL's binary format, column by column.
func Compatible(src, dst *Table) error {
	for i, s := range src.Columns {
		d := dst.Columns[i]
		if s.TypeOID == d.TypeOID && s.Kind != "e" && d.Kind != "e" {
			continue
		}
		sText := textLike[s.TypeOID] || s.Kind == "e"
		dText := textLike[d.TypeOID] || d.Kind == "e"
		if sText && dText {
			continue
		}
		return fmt.Errorf("column %q is %s on the source but %s on the chat side: use the same type on both", s.Name, s.TypeName, d.TypeName)
	}
	return nil
}

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
