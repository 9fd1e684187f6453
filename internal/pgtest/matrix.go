package pgtest

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"time"
)

// The type matrix: a table with a column of every kind of type PostgreSQL
// replicates, and a generator of random values for each, as SQL
// expressions built with constructors (ARRAY[…], ROW(…)) so that the
// values themselves can hold every character that needs escaping.

// MatrixTypes creates the types the matrix table uses (run it on the
// source; cdc migrate --create-types copies them to chat).
const MatrixTypes = `
CREATE EXTENSION IF NOT EXISTS citext;
CREATE EXTENSION IF NOT EXISTS hstore;
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy', 'it''s "complicated", {really}');
CREATE TYPE address AS (street text, zip int, tags text[]);
CREATE TYPE place AS (name text, addr address, moods mood[]);
CREATE DOMAIN posint AS int CHECK (VALUE > 0);
CREATE DOMAIN email AS citext CHECK (VALUE ~ '@');
CREATE DOMAIN tag_list AS text[] CHECK (cardinality(VALUE) < 10);
CREATE TYPE floatrange AS RANGE (subtype = float8);`

// matrixColumn is one column of the matrix: its name, type and generator
// of a random value (SQL).
type matrixColumn struct {
	name, typ string
	gen       func(r *rand.Rand) string
}

// Matrix is the matrix table's columns after id and updated_at, in order.
var Matrix = []matrixColumn{
	{"n", "numeric", genNumeric},
	{"n_arr", "numeric[]", arrayOf(genNumeric, "numeric")},
	{"f", "float8", genFloat},
	{"f4", "real", func(r *rand.Rand) string {
		return fmt.Sprintf("'%v'::real", math.Float32frombits(r.Uint32()&^(0xff<<23)|uint32(r.IntN(254)+1)<<23))
	}},
	{"f_arr", "float8[]", arrayOf(genFloat, "float8")},
	{"i", "int", func(r *rand.Rand) string { return fmt.Sprint(r.Int32() - r.Int32()) }},
	{"i_arr", "int[]", genIntArray},
	{"bool_", "boolean", func(r *rand.Rand) string { return fmt.Sprint(r.IntN(2) == 0) }},
	{"ts", "timestamptz", genTimestamp},
	{"ts_arr", "timestamptz[]", arrayOf(genTimestamp, "timestamptz")},
	{"tsn", "timestamp", func(r *rand.Rand) string { return genTimestamp(r) + "::timestamp" }},
	{"d", "date", func(r *rand.Rand) string { return genTimestamp(r) + "::date" }},
	{"iv", "interval", genInterval},
	{"iv_arr", "interval[]", arrayOf(genInterval, "interval")},
	{"u", "uuid", genUUID},
	{"u_arr", "uuid[]", arrayOf(genUUID, "uuid")},
	{"t", "text", func(r *rand.Rand) string { return lit(genString(r)) }},
	{"t_arr", "text[]", genTextArray},
	{"ch", "char(3)", func(r *rand.Rand) string { return lit(cut(genString(r), 3)) }},
	{"vc", "varchar(20)", func(r *rand.Rand) string { return lit(cut(genString(r), 20)) }},
	{"b", "bytea", genBytea},
	{"b_arr", "bytea[]", arrayOf(genBytea, "bytea")},
	{"bits", "bit(8)", func(r *rand.Rand) string { return fmt.Sprintf("B'%08b'", r.IntN(256)) }},
	{"vbits", "varbit", genVarbit},
	{"m", "money", func(r *rand.Rand) string {
		return fmt.Sprintf("'%d.%02d'::numeric::money", r.IntN(2_000_000)-1_000_000, r.IntN(100))
	}},
	{"pt", "point", func(r *rand.Rand) string { return fmt.Sprintf("point(%s, %s)", coord(r), coord(r)) }},
	{"ln", "line", func(r *rand.Rand) string { return fmt.Sprintf("'{%d,%s,%s}'::line", 1+r.IntN(9), coord(r), coord(r)) }},
	{"ls", "lseg", func(r *rand.Rand) string { return fmt.Sprintf("'[%s,%s]'::lseg", pt(r), pt(r)) }},
	{"bx", "box", func(r *rand.Rand) string { return fmt.Sprintf("'%s,%s'::box", pt(r), pt(r)) }},
	{"pth", "path", genPath},
	{"pg", "polygon", func(r *rand.Rand) string { return fmt.Sprintf("'(%s,%s,%s)'::polygon", pt(r), pt(r), pt(r)) }},
	{"ci", "circle", func(r *rand.Rand) string { return fmt.Sprintf("'<%s,%d>'::circle", pt(r), r.IntN(100)) }},
	{"inet_", "inet", genInet},
	{"cidr_", "cidr", func(r *rand.Rand) string { return "network(" + genInet(r) + ")::cidr" }},
	{"mac", "macaddr", func(r *rand.Rand) string { return lit(mac(r, 6)) + "::macaddr" }},
	{"mac8", "macaddr8", func(r *rand.Rand) string { return lit(mac(r, 8)) + "::macaddr8" }},
	{"x", "xml", func(r *rand.Rand) string {
		return fmt.Sprintf("xmlelement(name item, xmlattributes(%s AS note), %s)", lit(genString(r)), lit(genString(r)))
	}},
	{"j", "json", func(r *rand.Rand) string { return lit(genJSON(r, 2, true)) + "::json" }},
	{"jb", "jsonb", func(r *rand.Rand) string { return lit(genJSON(r, 3, false)) + "::jsonb" }},
	{"jb_arr", "jsonb[]", arrayOf(func(r *rand.Rand) string { return lit(genJSON(r, 1, false)) + "::jsonb" }, "jsonb")},
	{"tsv", "tsvector", func(r *rand.Rand) string { return "to_tsvector('simple', " + lit(genString(r)+" "+genString(r)) + ")" }},
	{"tsq", "tsquery", func(r *rand.Rand) string {
		return lit(fmt.Sprintf("w%d & (w%d | !w%d)", r.IntN(9), r.IntN(9), r.IntN(9))) + "::tsquery"
	}},
	{"e", "mood", genMood},
	{"e_arr", "mood[]", arrayOf(genMood, "mood")},
	{"comp", "address", genAddress},
	{"comp_nested", "place", func(r *rand.Rand) string {
		return fmt.Sprintf("ROW(%s, %s, %s)::place", maybeNull(r, func(r *rand.Rand) string { return lit(genString(r)) }),
			genAddress(r), arrayOf(genMood, "mood")(r))
	}},
	{"comp_arr", "address[]", arrayOf(genAddress, "address")},
	{"dom", "posint", func(r *rand.Rand) string { return fmt.Sprint(1+r.IntN(math.MaxInt32-1)) + "::posint" }},
	{"dom_email", "email", func(r *rand.Rand) string { return lit(genString(r)+"@"+genString(r)) + "::email" }},
	{"dom_arr", "tag_list", func(r *rand.Rand) string { return genTextArray1(r) + "::tag_list" }},
	{"r", "int4range", genIntRange},
	{"r_arr", "int4range[]", arrayOf(genIntRange, "int4range")},
	{"tr", "tstzrange", func(r *rand.Rand) string {
		a := time.Unix(r.Int64N(4e9), 0).UTC()
		return fmt.Sprintf("tstzrange(%s, %s, '[)')", lit(a.Format(time.RFC3339)), lit(a.Add(time.Hour).Format(time.RFC3339)))
	}},
	{"fr", "floatrange", func(r *rand.Rand) string {
		a := r.Float64() * 100
		return fmt.Sprintf("floatrange(%v, %v)", a, a+r.Float64())
	}},
	{"mr", "int4multirange", func(r *rand.Rand) string {
		return fmt.Sprintf("int4multirange(%s, %s)", genIntRange(r), genIntRange(r))
	}},
	{"cit", "citext", func(r *rand.Rand) string { return lit(genString(r)) + "::citext" }},
	{"hs", "hstore", genHstore},
	{"hs_arr", "hstore[]", arrayOf(genHstore, "hstore")},
	{"big", "text", nil}, // a large value, stored out of line (TOAST); see MatrixBig
}

// MatrixTable is the DDL of a matrix table called name (quoted as given).
func MatrixTable(name string) string {
	cols := []string{"id bigint PRIMARY KEY", "updated_at timestamptz NOT NULL DEFAULT now()"}
	for _, c := range Matrix {
		cols = append(cols, c.name+" "+c.typ)
	}
	return fmt.Sprintf("CREATE TABLE %s (\n  %s\n); CREATE INDEX ON %s (updated_at)", name, strings.Join(cols, ",\n  "), name)
}

// MatrixColumns lists every column of the matrix table.
func MatrixColumns() []string {
	out := []string{"id", "updated_at"}
	for _, c := range Matrix {
		out = append(out, c.name)
	}
	return out
}

// MatrixInsert is an INSERT of rows ids (random values, each column NULL
// one time in eight) into the matrix table name.
func MatrixInsert(r *rand.Rand, name string, ids ...int64) string {
	var rows []string
	for _, id := range ids {
		vals := []string{fmt.Sprint(id), "clock_timestamp()"}
		for _, c := range Matrix {
			switch {
			case c.gen == nil:
				vals = append(vals, MatrixBig(r))
			case r.IntN(8) == 0:
				vals = append(vals, "NULL")
			default:
				vals = append(vals, c.gen(r))
			}
		}
		rows = append(rows, "("+strings.Join(vals, ", ")+")")
	}
	return fmt.Sprintf("INSERT INTO %s (%s) VALUES\n%s", name, strings.Join(MatrixColumns(), ", "), strings.Join(rows, ",\n"))
}

// MatrixUpdate sets a few random columns of row id to new random values.
func MatrixUpdate(r *rand.Rand, name string, id int64) string {
	set := []string{"updated_at = clock_timestamp()"}
	for _, i := range r.Perm(len(Matrix) - 1)[:1+r.IntN(4)] { // never big: it stays unchanged, out of line
		c := Matrix[i]
		set = append(set, c.name+" = "+maybeNull(r, c.gen))
	}
	return fmt.Sprintf("UPDATE %s SET %s WHERE id = %d", name, strings.Join(set, ", "), id)
}

// MatrixBig is a text value too large and too random to stay in the row:
// PostgreSQL stores it out of line, and an update that leaves it alone
// sends it as "unchanged" in the stream.
func MatrixBig(r *rand.Rand) string {
	b := make([]byte, 6000)
	for i := range b {
		b[i] = byte(r.UintN(256))
	}
	return "encode(" + lit(`\x`+hex.EncodeToString(b)) + "::bytea, 'base64')"
}

// MatrixEdges are hand-picked values the random ones may miss, one row per
// entry: column -> SQL.
var MatrixEdges = []map[string]string{
	{"n": "'NaN'", "f": "'NaN'", "f4": "'-Infinity'", "ts": "'infinity'", "tsn": "'-infinity'", "d": "'infinity'",
		"t": "''", "t_arr": "'{}'", "i_arr": "'{}'", "n_arr": "ARRAY['Infinity', '-Infinity', 'NaN', NULL]::numeric[]",
		"b": `'\x'::bytea`, "jb": `'{}'`, "j": `'  [ ]  '`, "hs": "''", "r": "'empty'", "mr": "'{}'", "vbits": "B''"},
	{"n": "'Infinity'", "f": "'-0'", "f4": "'Infinity'", "ts": "'-infinity'", "t": "'NULL'",
		"t_arr": `ARRAY['NULL', NULL, '', ' ', '"', '\', '{', '}', ',', '''']`,
		"i_arr": "'[0:1][-1:0]={{1,2},{3,NULL}}'::int[]", "e_arr": "'{}'::mood[]",
		"comp": "ROW(NULL, NULL, NULL)::address", "comp_arr": "ARRAY[NULL, ROW('a,b', 1, '{}')]::address[]",
		"jb": `'{"a": [1, "\u00e9x"], "ü": {"": null}}'`, "hs": `'a=>NULL, "b c"=>"d\"e", "\\"=>""'`,
		"x": "'<a>&amp;</a>'", "tsv": "''", "r": "'(,)'", "iv": "'-178000000 years'", "m": "'-92233720368547758.08'"},
	{"n": "-0.000000000000000000001", "f": "1.7976931348623157e308", "f4": "1.4e-45", "i": "-2147483648",
		"t": "E'tab\\there\\nnew line \\\\ 日本語 😀'", "ch": "'a'", "vc": "'exactly twenty chars'",
		"t_arr": "ARRAY[ARRAY['a', 'b'], ARRAY['c', NULL]]", "e": `'it''s "complicated", {really}'`,
		"comp_nested": "ROW('x', ROW('y', 2, ARRAY['z']), ARRAY['ok', NULL]::mood[])::place", "d": "'4713-01-01 BC'",
		"iv": "'1 year 2 mons -3 days 04:05:06.789'", "ts": "'0001-01-01 00:00:00+00 BC'"},
}

// MatrixEdgeInsert inserts row id with the edge values of edge and random
// values elsewhere.
func MatrixEdgeInsert(r *rand.Rand, name string, id int64, edge map[string]string) string {
	vals := []string{fmt.Sprint(id), "clock_timestamp()"}
	for _, c := range Matrix {
		if v, ok := edge[c.name]; ok {
			vals = append(vals, "("+v+")::"+c.typ)
			continue
		}
		if c.gen == nil {
			vals = append(vals, MatrixBig(r))
			continue
		}
		vals = append(vals, c.gen(r))
	}
	return fmt.Sprintf("INSERT INTO %s (%s) VALUES (%s)", name, strings.Join(MatrixColumns(), ", "), strings.Join(vals, ", "))
}

// lit quotes s as a SQL string literal (standard_conforming_strings on).
func lit(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// chars are what random strings are made of: every character that array,
// composite, hstore or COPY text syntax escapes, spaces, and some
// multi-byte ones.
var chars = []string{"a", "B", "z", "0", "9", " ", " ", "\t", "\n", "\r", `"`, "'", `\`, "{", "}", "(", ")", ",", "=", ">",
	"[", "]", ":", ";", "$", "é", "ß", "日", "😀", "\u00a0"}

func genString(r *rand.Rand) string {
	switch r.IntN(12) {
	case 0:
		return ""
	case 1:
		return "NULL"
	}
	var b strings.Builder
	for range r.IntN(14) + 1 {
		b.WriteString(chars[r.IntN(len(chars))])
	}
	return b.String()
}

func cut(s string, n int) string {
	runes := []rune(s)
	if len(runes) > n {
		runes = runes[:n]
	}
	return string(runes)
}

func maybeNull(r *rand.Rand, gen func(*rand.Rand) string) string {
	if r.IntN(6) == 0 {
		return "NULL"
	}
	return gen(r)
}

// arrayOf makes one-dimensional arrays of gen's values (some NULL), empty
// ones included.
func arrayOf(gen func(*rand.Rand) string, elem string) func(*rand.Rand) string {
	return func(r *rand.Rand) string {
		n := r.IntN(5)
		if n == 0 {
			return "'{}'::" + elem + "[]"
		}
		vals := make([]string, n)
		for i := range vals {
			vals[i] = maybeNull(r, gen)
		}
		return "ARRAY[" + strings.Join(vals, ", ") + "]::" + elem + "[]"
	}
}

func genNumeric(r *rand.Rand) string {
	switch r.IntN(10) {
	case 0:
		return "'NaN'::numeric"
	case 1:
		return "'Infinity'::numeric"
	case 2:
		return "'-Infinity'::numeric"
	}
	return fmt.Sprintf("%d.%0*d", r.Int64()-r.Int64(), 1+r.IntN(20), r.Int64N(1e18))
}

func genFloat(r *rand.Rand) string {
	switch r.IntN(10) {
	case 0:
		return "'NaN'::float8"
	case 1:
		return "'Infinity'::float8"
	case 2:
		return "'-0'::float8"
	}
	return fmt.Sprintf("%v::float8", math.Float64frombits(r.Uint64()&^(0x7ff<<52)|uint64(r.IntN(2046)+1)<<52))
}

func genIntArray(r *rand.Rand) string {
	switch r.IntN(4) {
	case 0: // two dimensions
		return fmt.Sprintf("ARRAY[ARRAY[%d, %d], ARRAY[%d, NULL]]", r.Int32(), r.Int32(), r.Int32())
	case 1: // three
		return fmt.Sprintf("'{{{%d},{%d}},{{%d},{%d}}}'::int[]", r.Int32(), r.Int32(), r.Int32(), r.Int32())
	}
	return arrayOf(func(r *rand.Rand) string { return fmt.Sprint(r.Int32()) }, "int")(r)
}

func genTimestamp(r *rand.Rand) string {
	t := time.Unix(r.Int64N(8e9)-3e9, r.Int64N(1e9)/1000*1000).UTC()
	return lit(t.Format("2006-01-02 15:04:05.999999Z07:00")) + "::timestamptz"
}

func genInterval(r *rand.Rand) string {
	return fmt.Sprintf("make_interval(months => %d, days => %d, secs => %d.%06d)", r.IntN(2000)-1000, r.IntN(200)-100, r.IntN(1e6)-5e5, r.IntN(1e6))
}

func genUUID(r *rand.Rand) string {
	b := make([]byte, 16)
	for i := range b {
		b[i] = byte(r.UintN(256))
	}
	return lit(hex.EncodeToString(b)) + "::uuid"
}

func genTextArray(r *rand.Rand) string {
	if r.IntN(4) == 0 {
		return fmt.Sprintf("ARRAY[ARRAY[%s, %s], ARRAY[%s, NULL]]", lit(genString(r)), lit(genString(r)), lit(genString(r)))
	}
	return genTextArray1(r)
}

func genTextArray1(r *rand.Rand) string {
	return arrayOf(func(r *rand.Rand) string { return lit(genString(r)) }, "text")(r)
}

func genBytea(r *rand.Rand) string {
	b := make([]byte, r.IntN(20))
	for i := range b {
		b[i] = byte(r.UintN(256))
	}
	return lit(`\x`+hex.EncodeToString(b)) + "::bytea"
}

func genVarbit(r *rand.Rand) string {
	var b strings.Builder
	for range r.IntN(20) {
		b.WriteByte('0' + byte(r.IntN(2)))
	}
	return "B'" + b.String() + "'"
}

func coord(r *rand.Rand) string { return fmt.Sprintf("%v", math.Round(r.NormFloat64()*1e6)/1e3) }
func pt(r *rand.Rand) string    { return "(" + coord(r) + "," + coord(r) + ")" }

func genPath(r *rand.Rand) string {
	open, close := "[", "]"
	if r.IntN(2) == 0 {
		open, close = "(", ")"
	}
	return fmt.Sprintf("'%s%s,%s,%s%s'::path", open, pt(r), pt(r), pt(r), close)
}

func genInet(r *rand.Rand) string {
	if r.IntN(2) == 0 {
		return lit(fmt.Sprintf("%d.%d.%d.%d/%d", r.IntN(256), r.IntN(256), r.IntN(256), r.IntN(256), 8+r.IntN(25))) + "::inet"
	}
	return lit(fmt.Sprintf("2001:db8:%x::%x/%d", r.IntN(65536), r.IntN(65536), 32+r.IntN(97))) + "::inet"
}

func mac(r *rand.Rand, n int) string {
	parts := make([]string, n)
	for i := range parts {
		parts[i] = fmt.Sprintf("%02x", r.IntN(256))
	}
	return strings.Join(parts, ":")
}

// genJSON is a random JSON document; with spaced, extra white space that
// json (unlike jsonb) keeps.
func genJSON(r *rand.Rand, depth int, spaced bool) string {
	var v any
	var build func(d int) any
	build = func(d int) any {
		switch k := r.IntN(6); {
		case d == 0 || k == 0:
			return genString(r)
		case k == 1:
			return r.NormFloat64() * 1e3
		case k == 2:
			return nil
		case k == 3:
			return r.IntN(2) == 0
		case k == 4:
			a := make([]any, r.IntN(3))
			for i := range a {
				a[i] = build(d - 1)
			}
			return a
		default:
			m := map[string]any{}
			for range r.IntN(3) {
				m[genString(r)] = build(d - 1)
			}
			return m
		}
	}
	v = build(depth)
	b, _ := json.Marshal(v)
	if spaced {
		return " " + string(b) + "\n"
	}
	return string(b)
}

var moods = []string{"sad", "ok", "happy", `it's "complicated", {really}`}

func genMood(r *rand.Rand) string { return lit(moods[r.IntN(len(moods))]) + "::mood" }

func genAddress(r *rand.Rand) string {
	return fmt.Sprintf("ROW(%s, %s, %s)::address", maybeNull(r, func(r *rand.Rand) string { return lit(genString(r)) }),
		maybeNull(r, func(r *rand.Rand) string { return fmt.Sprint(r.Int32()) }), arrayOf(func(r *rand.Rand) string { return lit(genString(r)) }, "text")(r))
}

func genIntRange(r *rand.Rand) string {
	a := r.IntN(1000) - 500
	lo, hi := fmt.Sprint(a), fmt.Sprint(a+r.IntN(100))
	if r.IntN(5) == 0 {
		lo = "NULL"
	}
	bounds := []string{"[)", "(]", "[]", "()"}[r.IntN(4)]
	return fmt.Sprintf("int4range(%s, %s, '%s')", lo, hi, bounds)
}

func genHstore(r *rand.Rand) string {
	pairs := make([]string, r.IntN(4))
	for i := range pairs {
		pairs[i] = fmt.Sprintf("hstore(%s, %s)", lit(genString(r)), maybeNull(r, func(r *rand.Rand) string { return lit(genString(r)) }))
	}
	if len(pairs) == 0 {
		return "''::hstore"
	}
	return "(" + strings.Join(pairs, " || ") + ")"
}
