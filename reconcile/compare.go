package reconcile

import (
	"context"
	"encoding/binary"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/myusta/cdc/internal/schema"
)

// Side is one database's synced table.
type Side struct {
	Name  string // "source" or "chat", for messages
	Pool  *pgxpool.Pool
	Table *schema.Table

	recordHash bool // hash rows with hash_record_extended; set by the Reconciler for both sides alike
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

// byValue are the types whose values a record hash hashes as they are:
// their hash functions depend on nothing but the value. Other columns are
// hashed by their text form in the "C" collation, so that, say, an enum on
// the source and its text copy in chat hash alike, and a case-insensitive
// collation cannot hide a change of case.
var byValue = map[uint32]bool{
	pgtype.UUIDOID: true, pgtype.Int2OID: true, pgtype.Int4OID: true, pgtype.Int8OID: true, pgtype.BoolOID: true,
	pgtype.TimestamptzOID: true, pgtype.TimestampOID: true, pgtype.DateOID: true, pgtype.ByteaOID: true,
}

// rowHash is the SQL of a row's 64-bit hash over the synced columns. With
// recordHash, each column is hashed by its type's hash function
// (hash_record_extended, PostgreSQL 14+): 1M rows in 0.52 s against 1.17 s
// for the row's text form, which is hashed otherwise.
func (s Side) rowHash() string {
	if !s.recordHash {
		return "hashtextextended(ROW(" + s.Table.ColumnList() + ")::text, 0)"
	}
	exprs := make([]string, len(s.Table.Columns))
	for i, c := range s.Table.Columns {
		q := schema.Quote(c.Name)
		if byValue[c.TypeOID] {
			exprs[i] = q + "::" + c.TypeName // a domain hashes as its base type
		} else {
			exprs[i] = "(" + q + `::text) COLLATE "C"`
		}
	}
	return "hash_record_extended(ROW(" + strings.Join(exprs, ", ") + "), 0)"
}

// chooseHash hashes rows by value when both servers can (PostgreSQL 14+),
// and by their text form otherwise; both sides must hash alike.
func (r *Reconciler) chooseHash(ctx context.Context) error {
	r.hashMu.Lock()
	defer r.hashMu.Unlock()
	if r.hashChosen {
		return nil
	}
	record := true
	for _, s := range []Side{r.src, r.chat} {
		var v int
		if err := s.Pool.QueryRow(ctx, "SELECT current_setting('server_version_num')::int").Scan(&v); err != nil {
			return fmt.Errorf("%s: read server version: %w", s.Name, err)
		}
		record = record && v >= 140000
	}
	r.src.recordHash, r.chat.recordHash, r.hashChosen = record, record, true
	return nil
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
