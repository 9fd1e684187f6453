// Package ident parses the SQL identifiers cdc's configuration names
// (tables, columns, roles, publications) the way PostgreSQL's parser reads
// them, and renders them back for SQL and for people.
//
// An unquoted name is folded to lower case (ASCII letters only, as
// PostgreSQL does for UTF-8 databases): users and USERS are both "users". A
// double-quoted name is taken exactly, with "" standing for one quote:
// "Users", "firstName", "user", "e-mail address". A name may not be empty
// or longer than 63 bytes (PostgreSQL would silently truncate it).
package ident

import (
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
)

// MaxLen is PostgreSQL's identifier length limit (NAMEDATALEN - 1), in bytes.
const MaxLen = 63

// Table is a schema-qualified table name, each part exactly as the catalog
// spells it.
type Table struct {
	Schema, Name string
}

// Quoted is the table as SQL: both parts always quoted.
func (t Table) Quoted() string { return pgx.Identifier{t.Schema, t.Name}.Sanitize() }

// String is the table in configuration syntax: a part is quoted only when it
// must be (public.users, public."Users").
func (t Table) String() string { return Display(t.Schema) + "." + Display(t.Name) }

// IsZero reports whether t is unset.
func (t Table) IsZero() bool { return t == Table{} }

// Quote quotes one name for SQL.
func Quote(name string) string { return pgx.Identifier{name}.Sanitize() }

// Display renders name in configuration syntax: bare when reading it bare
// gives it back (lower-case letters, digits, _ and $, not starting with a
// digit or $), quoted otherwise.
func Display(name string) string {
	if plain(name) {
		return name
	}
	return Quote(name)
}

func plain(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z', c == '_':
		case (c >= '0' && c <= '9') || c == '$':
			if i == 0 {
				return false
			}
		default:
			return false
		}
	}
	return true
}

// DisplayList renders names in configuration syntax, comma-separated.
func DisplayList(names []string) string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = Display(n)
	}
	return strings.Join(out, ", ")
}

// QuoteList renders names as a SQL column list.
func QuoteList(names []string) string {
	out := make([]string, len(names))
	for i, n := range names {
		out[i] = Quote(n)
	}
	return strings.Join(out, ", ")
}

// ParseTable reads "table" or "schema.table"; an unqualified table is in
// schema public.
func ParseTable(s string) (Table, error) {
	sc := scanner{s: s}
	parts, err := sc.dotted()
	if err != nil {
		return Table{}, err
	}
	if err := sc.end(); err != nil {
		return Table{}, err
	}
	switch len(parts) {
	case 1:
		return Table{Schema: "public", Name: parts[0]}, nil
	case 2:
		return Table{Schema: parts[0], Name: parts[1]}, nil
	}
	return Table{}, fmt.Errorf("%q has %d dotted parts: use table or schema.table", s, len(parts))
}

// ParseName reads one name.
func ParseName(s string) (string, error) {
	sc := scanner{s: s}
	name, err := sc.name()
	if err != nil {
		return "", err
	}
	if err := sc.end(); err != nil {
		return "", err
	}
	return name, nil
}

// Mapped is one entry of a column list: the source column and the name it
// has in chat (the same unless the entry says "source AS chat").
type Mapped struct {
	Source, Chat string
}

// ParseList reads a comma-separated list of names; with mapping, an entry
// may be "name AS other". Empty entries are skipped; a name listed twice is
// an error.
func ParseList(s string, mapping bool) ([]Mapped, error) {
	sc := scanner{s: s}
	var out []Mapped
	seenSrc, seenChat := map[string]bool{}, map[string]bool{}
	for {
		sc.space()
		if sc.done() {
			break
		}
		if sc.peek() == ',' {
			sc.pos++
			continue
		}
		src, err := sc.name()
		if err != nil {
			return nil, err
		}
		m := Mapped{Source: src, Chat: src}
		sc.space()
		if sc.keyword("as") {
			if !mapping {
				return nil, fmt.Errorf("%q: AS (a different name in chat) is only allowed in SYNC_COLUMNS", s)
			}
			if m.Chat, err = sc.name(); err != nil {
				return nil, err
			}
			sc.space()
		}
		if !sc.done() && sc.peek() != ',' {
			return nil, fmt.Errorf("%q: unexpected %q after %s: separate names with commas", s, sc.rest(), Display(src))
		}
		if seenSrc[m.Source] {
			return nil, fmt.Errorf("names %s twice", Display(m.Source))
		}
		if seenChat[m.Chat] {
			return nil, fmt.Errorf("maps two columns to %s in chat", Display(m.Chat))
		}
		seenSrc[m.Source], seenChat[m.Chat] = true, true
		out = append(out, m)
	}
	return out, nil
}

// ParseNames reads a comma-separated list of names without mappings.
func ParseNames(s string) ([]string, error) {
	list, err := ParseList(s, false)
	if err != nil {
		return nil, err
	}
	out := make([]string, len(list))
	for i, m := range list {
		out[i] = m.Source
	}
	return out, nil
}

// scanner reads identifiers from s.
type scanner struct {
	s   string
	pos int
}

func (sc *scanner) done() bool { return sc.pos >= len(sc.s) }
func (sc *scanner) peek() byte { return sc.s[sc.pos] }
func (sc *scanner) rest() string {
	r := sc.s[sc.pos:]
	if len(r) > 20 {
		r = r[:20] + "…"
	}
	return r
}

func (sc *scanner) space() {
	for !sc.done() && strings.IndexByte(" \t\r\n", sc.peek()) >= 0 {
		sc.pos++
	}
}

func (sc *scanner) end() error {
	sc.space()
	if !sc.done() {
		return fmt.Errorf("%q: unexpected %q: a name with spaces, symbols or upper case must be in double quotes (%s)", sc.s, sc.rest(), Quote(sc.s))
	}
	return nil
}

// keyword consumes the bare word kw (any case) followed by a space or a
// quote (or ending the input), reporting whether it was there.
func (sc *scanner) keyword(kw string) bool {
	end := sc.pos + len(kw)
	if end > len(sc.s) || !strings.EqualFold(sc.s[sc.pos:end], kw) {
		return false
	}
	if end < len(sc.s) && strings.IndexByte(" \t\r\n\"", sc.s[end]) < 0 {
		return false
	}
	sc.pos = end
	sc.space()
	return true
}

// dotted reads name(.name)*.
func (sc *scanner) dotted() ([]string, error) {
	var parts []string
	for {
		sc.space()
		n, err := sc.name()
		if err != nil {
			return nil, err
		}
		parts = append(parts, n)
		sc.space()
		if sc.done() || sc.peek() != '.' {
			return parts, nil
		}
		sc.pos++
	}
}

// name reads one quoted or unquoted identifier at the current position.
func (sc *scanner) name() (string, error) {
	sc.space()
	if sc.done() {
		return "", fmt.Errorf("%q: a name is missing", sc.s)
	}
	var name string
	if sc.peek() == '"' {
		var b strings.Builder
		sc.pos++
		for {
			i := strings.IndexByte(sc.s[sc.pos:], '"')
			if i < 0 {
				return "", fmt.Errorf("%q: unterminated quoted name", sc.s)
			}
			b.WriteString(sc.s[sc.pos : sc.pos+i])
			sc.pos += i + 1
			if sc.pos < len(sc.s) && sc.s[sc.pos] == '"' {
				b.WriteByte('"')
				sc.pos++
				continue
			}
			break
		}
		name = b.String()
		if name == "" {
			return "", fmt.Errorf("%q: a quoted name may not be empty", sc.s)
		}
	} else {
		start := sc.pos
		for !sc.done() && unquotedByte(sc.peek(), sc.pos == start) {
			sc.pos++
		}
		if sc.pos == start {
			return "", fmt.Errorf("%q: unexpected %q: a name is a letter or _ followed by letters, digits, _ or $, or any text in double quotes", sc.s, sc.rest())
		}
		name = foldASCII(sc.s[start:sc.pos])
	}
	if !utf8.ValidString(name) || strings.IndexByte(name, 0) >= 0 {
		return "", fmt.Errorf("%q is not valid UTF-8 text", sc.s)
	}
	if len(name) > MaxLen {
		return "", fmt.Errorf("%s is %d bytes long: PostgreSQL names are at most %d", Display(name), len(name), MaxLen)
	}
	return name, nil
}

// unquotedByte reports whether c may appear in an unquoted identifier
// (bytes of non-ASCII characters count as letters, as in PostgreSQL).
func unquotedByte(c byte, first bool) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c == '_', c >= 0x80:
		return true
	case c >= '0' && c <= '9', c == '$':
		return !first
	}
	return false
}

func foldASCII(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}
