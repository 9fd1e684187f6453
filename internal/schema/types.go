package schema

import (
	"fmt"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/myusta/cdc/internal/ident"
)

// TypeName is a type's schema-qualified name: how a type is found on the
// other cluster, where its OID means nothing.
type TypeName struct {
	Schema, Name string
}

// Quoted is the name as SQL, usable in a cast ("public"."mood",
// "pg_catalog"."_int4" for int4[]).
func (n TypeName) Quoted() string { return ident.Quote(n.Schema) + "." + ident.Quote(n.Name) }

// String is the name for people.
func (n TypeName) String() string {
	if n.Schema == "pg_catalog" {
		return n.Name
	}
	return ident.Display(n.Schema) + "." + ident.Display(n.Name)
}

// Base describes the type a column's values have (a domain's base type).
type Base struct {
	OID      uint32 // on this cluster only
	Name     TypeName
	Display  string // format_type() with the modifier
	Kind     byte   // pg_type.typtype: b base, c composite, e enum, r range, m multirange
	Category byte   // pg_type.typcategory: A array, S string, …
	ArrayOID uint32 // the array type of this type, for set-based binary writes (0: none)
	Binary   bool   // has binary send and receive functions
	// SubKind and SubCategory describe an array's element type or a
	// range's subtype (0 otherwise).
	SubKind, SubCategory byte
	Domain               bool // the column's declared type is a domain over this one
}

// binaryProblem says why values of b cannot travel in PostgreSQL's binary
// format between two clusters ("" when they can). The binary forms of
// arrays and composites embed their element and field type OIDs, which
// differ between clusters for every type created by a user or an
// extension; scalars, enums and ranges over scalars embed none.
func (b Base) binaryProblem() string {
	switch {
	case !b.Binary:
		return "its type has no binary send/receive functions"
	case b.Category == 'A':
		return "arrays carry their element type's OID, which differs between clusters"
	case b.Kind == 'c':
		return "composite values carry their field types' OIDs, which differ between clusters"
	case b.Kind == 'm':
		return "multiranges travel as text"
	case b.Kind == 'r' && (b.SubKind != 'b' || b.SubCategory == 'A'):
		return "a range over a non-scalar subtype travels as text"
	case b.Kind != 'b' && b.Kind != 'e' && b.Kind != 'r':
		return fmt.Sprintf("types of kind %q travel as text", b.Kind)
	case b.ArrayOID == 0:
		return "its type has no array type, which set-based binary writes need"
	}
	return ""
}

// Format is how values travel from the source to chat: the pgoutput
// stream, the first copy, repairs and comparisons all use the same.
type Format uint8

// Formats. FormatAuto is only a request: Match resolves it.
const (
	FormatAuto Format = iota
	Binary
	Text
)

// Code is the format's protocol code (0 text, 1 binary).
func (f Format) Code() int16 {
	if f == Binary {
		return 1
	}
	return 0
}

func (f Format) String() string {
	switch f {
	case Binary:
		return "binary"
	case Text:
		return "text"
	}
	return "auto"
}

// ParseFormat reads WIRE_FORMAT.
func ParseFormat(s string) (Format, error) {
	switch s {
	case "auto":
		return FormatAuto, nil
	case "binary":
		return Binary, nil
	case "text":
		return Text, nil
	}
	return 0, fmt.Errorf("%q is not a format: use auto, binary or text", s)
}

// byValue are the built-in types whose values a record hash hashes as
// they are: their hash functions depend on nothing but the value. Other
// columns are hashed by their text form in the "C" collation, so that, say,
// an enum on the source and its text copy in chat hash alike, and a
// case-insensitive collation cannot hide a change of case.
var byValue = map[uint32]bool{
	pgtype.UUIDOID: true, pgtype.Int2OID: true, pgtype.Int4OID: true, pgtype.Int8OID: true, pgtype.BoolOID: true,
	pgtype.TimestamptzOID: true, pgtype.TimestampOID: true, pgtype.DateOID: true, pgtype.ByteaOID: true,
}

// HashExpr is the SQL of the column's part of a row hash.
func (c Column) HashExpr() string {
	if c.ByHash {
		return Quote(c.Name) + "::" + c.Base.Name.Quoted() // a domain hashes as its base type
	}
	return "(" + c.Expr + `)::text COLLATE "C"`
}

// TextExpr is the SQL of the column's comparable text form.
func (c Column) TextExpr() string { return "(" + c.Expr + ")::text" }
