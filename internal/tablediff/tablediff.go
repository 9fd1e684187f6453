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
