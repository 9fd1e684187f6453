package reconcile

import (
	"context"
	"encoding/binary"
	"fmt"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/myusta/cdc/internal/schema"
)

// Side is one database's synced table.
type Side struct {
	Name  string // "source" or "chat", for messages
	Pool  *pgxpool.Pool
	Table *schema.Table
}

// session settings that make ROW(...)::text identical on both servers
// whatever their configuration.
const stableText = "BEGIN READ ONLY; SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO, YMD'; " +
	"SET LOCAL IntervalStyle = 'postgres'; SET LOCAL extra_float_digits = 3; SET LOCAL bytea_output = 'hex'"

// withSession runs fn on one connection inside a read-only transaction
// with stable text output.
func (s Side) withSession(ctx context.Context, fn func(pc *pgconn.PgConn) error) error {
	conn, err := s.Pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("connect to %s: %w", s.Name, err)
	}
	defer conn.Release()
	pc := conn.Conn().PgConn()
	if _, err := pc.Exec(ctx, stableText).ReadAll(); err != nil {
		return fmt.Errorf("%s: %w", s.Name, err)
	}
	ferr := fn(pc)
	end := "COMMIT"
	if ferr != nil {
		end = "ROLLBACK"
	}
	if _, err := pc.Exec(context.WithoutCancel(ctx), end).ReadAll(); err != nil && ferr == nil {
		ferr = err
	}
	if ferr != nil {
		return fmt.Errorf("%s: %w", s.Name, ferr)
	}
	return nil
}

// rowHash is the SQL of a row's 64-bit hash over the synced columns.
func (s Side) rowHash() string {
	return "hashtextextended(ROW(" + s.Table.ColumnList() + ")::text, 0)"
}

// keyHash is the SQL of the key's 64-bit hash, which places rows in buckets.
func (s Side) keyHash() string {
	return "hashtextextended(" + schema.Quote(s.Table.KeyColumn().Name) + "::text, 0)"
}

// rows maps a row's binary key to its hash.
type rows map[string]int64

// hashes reads (key, row hash) for the rows matching where (SQL with $1…),
// keys in binary form.
func (s Side) hashes(ctx context.Context, where string, args ...[]byte) (rows, error) {
	out := rows{}
	sql := fmt.Sprintf("SELECT %s, %s FROM %s WHERE %s", schema.Quote(s.Table.KeyColumn().Name), s.rowHash(), s.Table.Ident(), where)
	err := s.withSession(ctx, func(pc *pgconn.PgConn) error {
		rr := pc.ExecParams(ctx, sql, args, nil, nil, []int16{1, 1})
		for rr.NextRow() {
			v := rr.Values()
			out[string(v[0])] = int64(binary.BigEndian.Uint64(v[1]))
		}
		_, err := rr.Close()
		return err
	})
	return out, err
}

// diff compares two hash sets; keys only in src are missing from chat,
// keys in both with another hash are stale, keys only in chat are extra
// (as far as these sets tell: the repair re-reads each key).
func diff(src, chat rows) (missing, stale, extra [][]byte) {
	for k, h := range src {
		if c, ok := chat[k]; !ok {
			missing = append(missing, []byte(k))
		} else if c != h {
			stale = append(stale, []byte(k))
		}
	}
	for k := range chat {
		if _, ok := src[k]; !ok {
			extra = append(extra, []byte(k))
		}
	}
	return missing, stale, extra
}
