// Package tablediff compares a table on two databases row by row, by an md5
// of each row's synced columns, for tests and benchmarks.
package tablediff

import (
	"context"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/myusta/cdc/internal/schema"
)

// Hashes returns key -> md5 of the row's cols for every row of table.
func Hashes(ctx context.Context, pool *pgxpool.Pool, table, key string, cols []string) (map[string]string, error) {
	quoted := make([]string, len(cols))
	for i, c := range cols {
		quoted[i] = schema.Quote(c)
	}
	rows, err := pool.Query(ctx, fmt.Sprintf("SELECT %s::text, md5(ROW(%s)::text) FROM %s", schema.Quote(key), strings.Join(quoted, ", "), table))
	if err != nil {
		return nil, err
	}
	out := map[string]string{}
	var k, h string
	_, err = pgx.ForEachRow(rows, []any{&k, &h}, func() error {
		out[k] = h
		return nil
	})
	return out, err
}

// Diff compares table on a (the source) and b (the copy) and describes up to
// max differences; empty means equal.
func Diff(ctx context.Context, a, b *pgxpool.Pool, table, key string, cols []string, max int) ([]string, error) {
	src, err := Hashes(ctx, a, table, key, cols)
	if err != nil {
		return nil, fmt.Errorf("read source: %w", err)
	}
	dst, err := Hashes(ctx, b, table, key, cols)
	if err != nil {
		return nil, fmt.Errorf("read copy: %w", err)
	}
	var diff []string
	for k, h := range src {
		if c, ok := dst[k]; !ok {
			diff = append(diff, "missing in copy: "+k)
		} else if c != h {
			diff = append(diff, "differs: "+k)
		}
	}
	for k := range dst {
		if _, ok := src[k]; !ok {
			diff = append(diff, "extra in copy: "+k)
		}
	}
	if len(diff) > max {
		diff = append(diff[:max], fmt.Sprintf("… %d differences in all (source %d rows, copy %d rows)", len(diff), len(src), len(dst)))
	}
	return diff, nil
}

// Side names a table and the columns to compare on one database: Key and
// Columns in the same order on both sides (names may differ, as with
// mapped columns).
type Side struct {
	Table   string // quoted, schema-qualified
	Key     []string
	Columns []string
}

// texts reads each row's key (as text) and the text form of each column.
func texts(ctx context.Context, pool *pgxpool.Pool, s Side) (map[string][]*string, error) {
	cols := make([]string, len(s.Columns))
	for i, c := range s.Columns {
		cols[i] = schema.Quote(c) + "::text"
	}
	keys := make([]string, len(s.Key))
	for i, k := range s.Key {
		keys[i] = schema.Quote(k) + "::text"
	}
	rows, err := pool.Query(ctx, fmt.Sprintf("SELECT ROW(%s)::text, ARRAY[%s] FROM %s", strings.Join(keys, ", "), strings.Join(cols, ", "), s.Table))
	if err != nil {
		return nil, err
	}
	out := map[string][]*string{}
	var k string
	var vals []*string
	_, err = pgx.ForEachRow(rows, []any{&k, &vals}, func() error {
		out[k] = vals
		return nil
	})
	return out, err
}

// DiffSides compares table sa on a with sb on b column by column, each
// value by its text form (both pools must use the same session settings),
// and describes up to max differences; empty means equal.
func DiffSides(ctx context.Context, a, b *pgxpool.Pool, sa, sb Side, max int) ([]string, error) {
	src, err := texts(ctx, a, sa)
	if err != nil {
		return nil, fmt.Errorf("read source: %w", err)
	}
	dst, err := texts(ctx, b, sb)
	if err != nil {
		return nil, fmt.Errorf("read copy: %w", err)
	}
	var diff []string
	for k, sv := range src {
		cv, ok := dst[k]
		if !ok {
			diff = append(diff, "missing in copy: "+k)
			continue
		}
		for i := range sv {
			if (sv[i] == nil) != (cv[i] == nil) || (sv[i] != nil && *sv[i] != *cv[i]) {
				diff = append(diff, fmt.Sprintf("differs: %s column %s: %s vs %s", k, sa.Columns[i], show(sv[i]), show(cv[i])))
				break
			}
		}
	}
	for k := range dst {
		if _, ok := src[k]; !ok {
			diff = append(diff, "extra in copy: "+k)
		}
	}
	if len(diff) > max {
		diff = append(diff[:max], fmt.Sprintf("… %d differences in all (source %d rows, copy %d rows)", len(diff), len(src), len(dst)))
	}
	return diff, nil
}

func show(s *string) string {
	if s == nil {
		return "NULL"
	}
	v := *s
	if len(v) > 120 {
		v = v[:120] + "…"
	}
	return fmt.Sprintf("%q", v)
}
