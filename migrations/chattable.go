package migrations

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/myusta/cdc/internal/ident"
	"github.com/myusta/cdc/internal/schema"
)

// MissingTypesError lists the column types cdc migrate cannot create the
// chat table with, each with what to run.
type MissingTypesError struct{ Problems []string }

func (e *MissingTypesError) Error() string {
	return "the chat database lacks types the source's columns have: " + strings.Join(e.Problems, "; ")
}

// EnsureChatTable creates the chat table when it does not exist: the
// synced columns under their chat names, with the source's types found by
// name on chat, the key as primary key, and an index on the updated_at
// column for the reconciler. An existing table gets the synced columns it
// lacks (a column added to SYNC_COLUMNS), typed the same way and nullable
// (existing rows have no value until cdc run backfills it); the rest of it
// is left alone.
//
// A type chat lacks: an enum becomes text and a domain its base type,
// each with a note; a composite, range or extension type is an error that
// says how to create it. With createTypes, missing enums, domains,
// composites and ranges are created from the source's definitions and
// missing extensions with CREATE EXTENSION. It reports whether it created
// the table, and the notes.
func EnsureChatTable(ctx context.Context, source, chat *pgxpool.Pool, spec Spec, createTypes bool) (created bool, notes []string, err error) {
	var exists bool
	if err := chat.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", spec.ChatTable.Quoted()).Scan(&exists); err != nil {
		return false, nil, fmt.Errorf("look up chat table: %w", err)
	}
	src, err := schema.Load(ctx, source, spec.Source())
	if err != nil {
		return false, nil, fmt.Errorf("source table: %w", err)
	}
	r := &typeResolver{src: source, chat: chat, create: createTypes, done: map[uint32]string{}}
	if exists {
		notes, err := addColumns(ctx, chat, r, spec, src)
		return false, notes, err
	}
	var defs []string
	for i, c := range src.Columns {
		typ, err := r.resolve(ctx, c.TypeOID, c.TypMod, ident.Display(spec.ChatColumns[i]))
		if err != nil {
			return false, nil, err
		}
		def := ident.Quote(spec.ChatColumns[i]) + " " + typ
		if c.NotNull {
			def += " NOT NULL"
		}
		defs = append(defs, def)
	}
	if len(r.problems) > 0 {
		return false, nil, &MissingTypesError{Problems: r.problems}
	}
	chatSpec := spec.Chat(src)
	t := spec.ChatTable
	defs = append(defs, "PRIMARY KEY ("+ident.QuoteList(chatSpec.Key)+")")
	ddl := append(r.ddl, fmt.Sprintf("CREATE SCHEMA IF NOT EXISTS %s", ident.Quote(t.Schema)),
		fmt.Sprintf("CREATE TABLE %s (\n  %s\n)", t.Quoted(), strings.Join(defs, ",\n  ")),
		fmt.Sprintf("CREATE INDEX %s ON %s (%s)", ident.Quote(indexName(t.Name, chatSpec.UpdatedAt)), t.Quoted(), ident.Quote(chatSpec.UpdatedAt)))
	if err := pgx.BeginFunc(ctx, chat, func(tx pgx.Tx) error {
		for _, stmt := range ddl {
			if _, err := tx.Exec(ctx, stmt); err != nil {
				return fmt.Errorf("%s: %w", firstLine(stmt), err)
			}
		}
		return nil
	}); err != nil {
		return false, nil, fmt.Errorf("create chat table %s: %w", t, err)
	}
	return true, r.notes, nil
}

// addColumns adds to the existing chat table the synced columns it lacks.
func addColumns(ctx context.Context, chat *pgxpool.Pool, r *typeResolver, spec Spec, src *schema.Table) ([]string, error) {
	var have []string
	if err := chat.QueryRow(ctx, `SELECT COALESCE(array_agg(attname::text), '{}') FROM pg_attribute WHERE attrelid = to_regclass($1) AND attnum > 0 AND NOT attisdropped`,
		spec.ChatTable.Quoted()).Scan(&have); err != nil {
		return nil, fmt.Errorf("read chat table columns: %w", err)
	}
	var ddl, added []string
	for i, c := range src.Columns {
		name := spec.ChatColumns[i]
		if slices.Contains(have, name) {
			continue
		}
		typ, err := r.resolve(ctx, c.TypeOID, c.TypMod, ident.Display(name))
		if err != nil {
			return nil, err
		}
		ddl = append(ddl, fmt.Sprintf("ALTER TABLE %s ADD COLUMN %s %s", spec.ChatTable.Quoted(), ident.Quote(name), typ))
		added = append(added, fmt.Sprintf("added column %s %s to %s (cdc run fills it for the existing rows)", ident.Display(name), typ, spec.ChatTable))
	}
	if len(r.problems) > 0 {
		return nil, &MissingTypesError{Problems: r.problems}
	}
	if len(ddl) == 0 {
		return r.notes, nil
	}
	if err := pgx.BeginFunc(ctx, chat, func(tx pgx.Tx) error {
		for _, stmt := range append(r.ddl, ddl...) {
			if _, err := tx.Exec(ctx, stmt); err != nil {
				return fmt.Errorf("%s: %w", firstLine(stmt), err)
			}
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("add columns to chat table %s: %w", spec.ChatTable, err)
	}
	return append(r.notes, added...), nil
}

// indexName is the updated_at index's name, within PostgreSQL's limit.
func indexName(table, col string) string {
	n := table + "_" + col + "_idx"
	for len(n) > ident.MaxLen {
		n = n[:len(n)-1]
	}
	return n
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

// typeResolver finds, for source types, the type to declare on chat.
type typeResolver struct {
	src, chat *pgxpool.Pool
	create    bool
	done      map[uint32]string // source type OID -> chat SQL, resolved so far
	ddl       []string          // statements creating types, in dependency order
	notes     []string
	problems  []string
}

// sourceType is a type as the source's catalog has it.
type sourceType struct {
	name                      schema.TypeName
	kind, category            string
	elem, base, relid, rngSub uint32
	typmod                    int32
	notNull                   bool
	def                       *string
	extension                 *string
	display                   string
}

func (r *typeResolver) lookup(ctx context.Context, oid uint32, typmod int32) (sourceType, error) {
	var t sourceType
	err := r.src.QueryRow(ctx, `SELECT n.nspname, t.typname, t.typtype::text, t.typcategory::text, t.typelem, t.typbasetype, t.typtypmod,
  t.typnotnull, t.typdefault, t.typrelid, COALESCE((SELECT rngsubtype FROM pg_range WHERE rngtypid = t.oid), 0),
  (SELECT e.extname FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
   WHERE d.classid = 'pg_type'::regclass AND d.objid = t.oid AND d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'),
  format_type(t.oid, $2)
FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace WHERE t.oid = $1`, oid, typmod).Scan(
		&t.name.Schema, &t.name.Name, &t.kind, &t.category, &t.elem, &t.base, &t.typmod, &t.notNull, &t.def, &t.relid, &t.rngSub, &t.extension, &t.display)
	if err != nil {
		return t, fmt.Errorf("read source type %d: %w", oid, err)
	}
	return t, nil
}

// resolve returns the chat SQL for source type oid with modifier typmod;
// col names the column for messages.
func (r *typeResolver) resolve(ctx context.Context, oid uint32, typmod int32, col string) (string, error) {
	t, err := r.lookup(ctx, oid, typmod)
	if err != nil {
		return "", err
	}
	if t.name.Schema == "pg_catalog" {
		return t.display, nil // built-in: the same on every cluster
	}
	if t.category == "A" && t.elem != 0 {
		elem, err := r.resolve(ctx, t.elem, typmod, col)
		return elem + "[]", err
	}
	if sql, ok := r.done[oid]; ok {
		return sql + modifier(t.display), nil
	}
	var exists bool
	if err := r.chat.QueryRow(ctx, "SELECT to_regtype($1) IS NOT NULL", t.name.Quoted()).Scan(&exists); err != nil {
		return "", fmt.Errorf("look up type %s on chat: %w", t.name, err)
	}
	sql := t.name.Quoted()
	switch {
	case exists:
	case t.kind == "e":
		if sql, err = r.enum(ctx, oid, t, col); err != nil {
			return "", err
		}
	case t.kind == "d":
		if sql, err = r.domain(ctx, oid, t, col); err != nil {
			return "", err
		}
	case t.extension != nil:
		if r.create {
			r.ddl = append(r.ddl, fmt.Sprintf("CREATE EXTENSION IF NOT EXISTS %s WITH SCHEMA %s", ident.Quote(*t.extension), ident.Quote(t.name.Schema)))
			r.notes = append(r.notes, fmt.Sprintf("created extension %s on chat (for %s)", *t.extension, t.name))
		} else {
			r.problems = append(r.problems, fmt.Sprintf("column %s is %s, from extension %s: run CREATE EXTENSION %s on chat (or cdc migrate --create-types)",
				col, t.name, *t.extension, ident.Quote(*t.extension)))
		}
	case t.kind == "c" || t.kind == "r":
		def, err := r.definition(ctx, t, col)
		if err != nil {
			return "", err
		}
		if r.create {
			r.ddl = append(r.ddl, createSchema(t.name), def)
			r.notes = append(r.notes, fmt.Sprintf("created type %s on chat", t.name))
		} else {
			r.problems = append(r.problems, fmt.Sprintf("column %s is %s, which chat lacks: create it there (%s) or run cdc migrate --create-types", col, t.name, def))
		}
	default:
		r.problems = append(r.problems, fmt.Sprintf("column %s is %s, which chat lacks and cdc cannot create: install it on chat as on the source", col, t.name))
	}
	r.done[oid] = sql
	return sql + modifier(t.display), nil
}

// modifier is the type modifier part of a format_type() result, e.g.
// "(Point,4326)" of geometry(Point,4326); "" when there is none.
func modifier(display string) string {
	if i := strings.IndexByte(display, '('); i >= 0 && strings.HasSuffix(display, ")") {
		return display[i:]
	}
	return ""
}

func createSchema(n schema.TypeName) string {
	return "CREATE SCHEMA IF NOT EXISTS " + ident.Quote(n.Schema)
}

// enum creates the enum on chat, or falls back to text.
func (r *typeResolver) enum(ctx context.Context, oid uint32, t sourceType, col string) (string, error) {
	if !r.create {
		r.notes = append(r.notes, fmt.Sprintf("column %s: chat has no enum %s, so the column is text (cdc migrate --create-types creates the enum instead)", col, t.name))
		return "text", nil
	}
	rows, err := r.src.Query(ctx, "SELECT enumlabel FROM pg_enum WHERE enumtypid = $1 ORDER BY enumsortorder", oid)
	if err != nil {
		return "", fmt.Errorf("read enum %s: %w", t.name, err)
	}
	labels, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return "", fmt.Errorf("read enum %s: %w", t.name, err)
	}
	quoted := make([]string, len(labels))
	for i, l := range labels {
		quoted[i] = quoteLiteral(l)
	}
	r.ddl = append(r.ddl, createSchema(t.name), fmt.Sprintf("CREATE TYPE %s AS ENUM (%s)", t.name.Quoted(), strings.Join(quoted, ", ")))
	r.notes = append(r.notes, fmt.Sprintf("created enum %s on chat", t.name))
	return t.name.Quoted(), nil
}

// domain creates the domain on chat, or falls back to its base type.
func (r *typeResolver) domain(ctx context.Context, oid uint32, t sourceType, col string) (string, error) {
	base, err := r.resolve(ctx, t.base, t.typmod, col)
	if err != nil {
		return "", err
	}
	if !r.create {
		r.notes = append(r.notes, fmt.Sprintf("column %s: chat has no domain %s, so the column is its base type %s, without the domain's checks (cdc migrate --create-types creates the domain instead)", col, t.name, base))
		return base, nil
	}
	def := fmt.Sprintf("CREATE DOMAIN %s AS %s", t.name.Quoted(), base)
	if t.def != nil {
		def += " DEFAULT " + *t.def
	}
	if t.notNull {
		def += " NOT NULL"
	}
	rows, err := r.src.Query(ctx, "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE contypid = $1 AND contype = 'c' ORDER BY conname", oid)
	if err != nil {
		return "", fmt.Errorf("read domain %s: %w", t.name, err)
	}
	defer rows.Close()
	for rows.Next() {
		var name, check string
		if err := rows.Scan(&name, &check); err != nil {
			return "", fmt.Errorf("read domain %s: %w", t.name, err)
		}
		def += " CONSTRAINT " + ident.Quote(name) + " " + check
	}
	if err := rows.Err(); err != nil {
		return "", fmt.Errorf("read domain %s: %w", t.name, err)
	}
	r.ddl = append(r.ddl, createSchema(t.name), def)
	r.notes = append(r.notes, fmt.Sprintf("created domain %s on chat", t.name))
	return t.name.Quoted(), nil
}

// definition is the CREATE TYPE statement of a composite or range type,
// its field types resolved on chat first.
func (r *typeResolver) definition(ctx context.Context, t sourceType, col string) (string, error) {
	if t.kind == "r" {
		sub, err := r.resolve(ctx, t.rngSub, -1, col)
		if err != nil {
			return "", err
		}
		return fmt.Sprintf("CREATE TYPE %s AS RANGE (SUBTYPE = %s)", t.name.Quoted(), sub), nil
	}
	rows, err := r.src.Query(ctx, "SELECT attname, atttypid, atttypmod FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped ORDER BY attnum", t.relid)
	if err != nil {
		return "", fmt.Errorf("read composite %s: %w", t.name, err)
	}
	type field struct {
		name   string
		oid    uint32
		typmod int32
	}
	fields, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (field, error) {
		var f field
		return f, row.Scan(&f.name, &f.oid, &f.typmod)
	})
	if err != nil {
		return "", fmt.Errorf("read composite %s: %w", t.name, err)
	}
	defs := make([]string, len(fields))
	for i, f := range fields {
		typ, err := r.resolve(ctx, f.oid, f.typmod, col)
		if err != nil {
			return "", err
		}
		defs[i] = ident.Quote(f.name) + " " + typ
	}
	return fmt.Sprintf("CREATE TYPE %s AS (%s)", t.name.Quoted(), strings.Join(defs, ", ")), nil
}

func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }
