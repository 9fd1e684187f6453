package schema

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/myusta/cdc/internal/ident"
)

// MismatchError lists the column pairs whose values cannot go from the
// source into chat, each with both types and the fix.
type MismatchError struct {
	Problems []string
}

func (e *MismatchError) Error() string { return strings.Join(e.Problems, "; ") }

// Match checks that every synced source column can be written into its
// chat column, decides the format values travel in, and sets both tables'
// Format and per-column expressions. Column i of src goes into column i of
// chat. Types are compared by schema-qualified name (after resolving
// domains); where they differ, chat must take the source's values through
// an assignment cast, as an INSERT would (source enum into chat text, int4
// into int8, json into jsonb, anything into a string type).
//
// Values travel in binary when want allows it and every pair has the same
// type, one whose binary form embeds no type OIDs (see binaryProblem);
// otherwise in text, which PostgreSQL's own subscriptions use by default:
// each type's output function on the source, its input function on chat.
func Match(ctx context.Context, srcQ, chatQ Querier, src, chat *Table, want Format) error {
	if len(src.Columns) != len(chat.Columns) {
		return fmt.Errorf("match %s and %s: %d and %d columns", src, chat, len(src.Columns), len(chat.Columns))
	}
	var problems, notBinary []string
	for i := range src.Columns {
		s, c := &src.Columns[i], &chat.Columns[i]
		same := s.Base.Name == c.Base.Name
		if !same {
			p, err := assignable(ctx, chatQ, chat, s, c)
			if err != nil {
				return err
			}
			if p != "" {
				problems = append(problems, p)
			}
		}
		why := ""
		switch {
		case !same:
			why = fmt.Sprintf("the types differ (%s, %s)", s.Display, c.Display)
		case s.Base.binaryProblem() != "":
			why = s.Base.binaryProblem()
		case c.Base.binaryProblem() != "":
			why = c.Base.binaryProblem() + " on chat"
		}
		if why != "" {
			notBinary = append(notBinary, fmt.Sprintf("column %s: %s", ident.Display(s.Name), why))
		}
		c.Expr, c.Cast = Quote(c.Name), c.Type.Quoted()
		s.Expr, s.Cast = Quote(s.Name), s.Type.Quoted()
		s.ByHash = same && byValue[s.Base.OID]
		c.ByHash = s.ByHash
		if !same {
			expr, err := readAs(ctx, srcQ, s, c)
			if err != nil {
				return err
			}
			s.Expr = expr
		}
	}
	if want == Binary && len(notBinary) > 0 {
		for _, p := range notBinary {
			problems = append(problems, p+" (WIRE_FORMAT=binary; use auto or text)")
		}
	}
	if len(problems) > 0 {
		return &MismatchError{Problems: problems}
	}
	f := Binary
	if want == Text || len(notBinary) > 0 {
		f = Text
	}
	src.Format, chat.Format = f, f
	return nil
}

// assignable reports ("" when fine) whether chat column c can take the
// values of source column s, whose types differ by name.
func assignable(ctx context.Context, chatQ Querier, chat *Table, s, c *Column) (string, error) {
	if c.Base.Category == 'S' || (c.Base.Category == 'A' && c.Base.SubCategory == 'S' && s.Base.Category == 'A') {
		return "", nil // every type converts to a string type on assignment
	}
	col := ident.Display(s.Name)
	if c.Name != s.Name {
		col += " (chat " + ident.Display(c.Name) + ")"
	}
	var exists bool
	if err := chatQ.QueryRow(ctx, "SELECT to_regtype($1) IS NOT NULL", s.Base.Name.Quoted()).Scan(&exists); err != nil {
		return "", fmt.Errorf("look up type %s on chat: %w", s.Base.Name, err)
	}
	if !exists {
		return fmt.Sprintf("column %s is %s on the source and %s on chat, and chat has no type %s to convert from: create it on chat (cdc migrate --create-types can) or make the chat column %s",
			col, s.Display, c.Display, s.Base.Name, s.Display), nil
	}
	// EXPLAIN analyses the INSERT as PostgreSQL would, without running it:
	// it fails when no assignment cast leads from one type to the other.
	sql := fmt.Sprintf("EXPLAIN INSERT INTO %s (%s) SELECT NULL::%s WHERE false", chat.Ident(), Quote(c.Name), s.Base.Name.Quoted())
	err := drain(ctx, chatQ, sql)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && (pgErr.Code == "42804" || pgErr.Code == "42846") {
		return fmt.Sprintf("column %s is %s on the source but %s on chat, and PostgreSQL has no assignment cast from one to the other: make the chat column %s (or a type it converts to on assignment)",
			col, s.Display, c.Display, s.Display), nil
	}
	if err != nil {
		return "", fmt.Errorf("check column %s on chat: %w", col, err)
	}
	return "", nil
}

// readAs returns the SQL that reads source column s for comparison with
// chat column c of another type: converted on the source to chat's type
// when the source has it (json read as jsonb compares equal to what chat
// stored), else the plain column.
func readAs(ctx context.Context, srcQ Querier, s, c *Column) (string, error) {
	plain := Quote(s.Name)
	var exists bool
	if err := srcQ.QueryRow(ctx, "SELECT to_regtype($1) IS NOT NULL", c.Base.Name.Quoted()).Scan(&exists); err != nil {
		return "", fmt.Errorf("look up type %s on the source: %w", c.Base.Name, err)
	}
	if !exists {
		return plain, nil
	}
	expr := plain + "::" + c.Base.Name.Quoted()
	if err := drain(ctx, srcQ, fmt.Sprintf("EXPLAIN SELECT NULL::%s::%s", s.Base.Name.Quoted(), c.Base.Name.Quoted())); err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) {
			return plain, nil
		}
		return "", fmt.Errorf("check a cast on the source: %w", err)
	}
	return expr, nil
}

func drain(ctx context.Context, q Querier, sql string) error {
	rows, err := q.Query(ctx, sql)
	if err != nil {
		return err
	}
	rows.Close()
	return rows.Err()
}
