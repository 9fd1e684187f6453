package sink

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/myusta/cdc/internal/retry"
	"github.com/myusta/cdc/internal/schema"
)

// backfillPage is how many rows one backfill transaction reads and writes.
const backfillPage = 5000

// BackfillResult counts what Backfill did.
type BackfillResult struct {
	Read    int64 // source rows read
	Updated int64 // chat rows whose columns changed
}

// Backfill makes chat's columns cols (indexes into the table's columns)
// equal to the source's in every row chat has, a page of keys at a time,
// without touching the other columns or rows chat lacks (the stream and
// the reconciler own those). Each page is one chat transaction that takes
// the writer lock and then reads the source page, so what it writes is
// newer than anything any writer has committed, and changes the stream
// applies afterwards are newer still: it is safe while the stream runs.
// src is the source table as Match left it; progress, when set, is called
// after every page.
func (s *Sink) Backfill(ctx context.Context, src *pgxpool.Pool, srcTable *schema.Table, cols []int, progress func(BackfillResult)) (BackfillResult, error) {
	q := backfillSQL(srcTable, s.table, cols)
	var res BackfillResult
	var after []*string // the last key read, as text; nil before the first page
	for {
		var n, updated int64
		var last []*string
		err := s.exclusive(ctx, "backfill columns", func(ctx context.Context, conn *pgxpool.Conn) error {
			page, err := readPage(ctx, src, q, after, len(srcTable.Key)+len(cols))
			if err != nil {
				return fmt.Errorf("read source rows: %w", err)
			}
			n, last = int64(len(page)), nil
			if len(page) == 0 {
				return nil
			}
			last = page[len(page)-1][:len(srcTable.Key)]
			args := make([]any, len(page[0]))
			for j := range args {
				col := make([]*string, len(page))
				for i, row := range page {
					col[i] = row[j]
				}
				args[j] = col
			}
			tag, err := conn.Exec(ctx, q.update, args...)
			updated = tag.RowsAffected()
			return err
		})
		if err != nil {
			return res, fmt.Errorf("backfill columns: %w", err)
		}
		res.Read += n
		res.Updated += updated
		if progress != nil {
			progress(res)
		}
		if n < backfillPage {
			return res, nil
		}
		after = last
	}
}

// exclusive runs fn in a chat transaction on the writer connection holding
// the writer lock (after any open transaction is done), retried as writes
// are, and commits it: how repairs and backfills write. What fn resolves
// of the open dead letters is settled once it commits.
func (s *Sink) exclusive(ctx context.Context, what string, fn func(ctx context.Context, conn *pgxpool.Conn) error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.waitIdle(ctx); err != nil {
		return err
	}
	err := retry.Do(ctx, s.opts.Retry, s.log, what, s.counted(func(ctx context.Context) error {
		s.begin()
		conn, err := s.writer(ctx)
		if err != nil {
			return err
		}
		pc := conn.Conn().PgConn()
		err = s.beginLocked(ctx, pc)
		if err == nil {
			err = fn(ctx, conn)
		}
		if err == nil {
			err = execSimple(ctx, pc, "COMMIT")
		}
		if err != nil {
			if !pc.IsClosed() && pc.TxStatus() != 'I' {
				_ = execSimple(context.WithoutCancel(ctx), pc, "ROLLBACK")
			}
			s.dropBroken()
		}
		return err
	}))
	if err == nil {
		s.committed() // the dead letters the transaction settled
	}
	return err
}

// backfillQueries are a backfill's statements.
type backfillQueries struct {
	first, next string // source pages: the first, and those after a key
	update      string // chat: text arrays of the keys and the columns
}

func backfillSQL(src, chat *schema.Table, cols []int) backfillQueries {
	var keys, order, after, read []string
	for i, k := range src.Key {
		c := src.Columns[k]
		keys = append(keys, schema.Quote(c.Name))
		after = append(after, fmt.Sprintf("$%d::%s", i+1, c.Cast))
		read = append(read, schema.Quote(c.Name)+"::text")
	}
	order = keys
	for _, i := range cols {
		read = append(read, schema.Quote(src.Columns[i].Name)+"::text")
	}
	sel := fmt.Sprintf("SELECT %s FROM %s", strings.Join(read, ", "), src.Ident())
	tail := fmt.Sprintf(" ORDER BY %s LIMIT %d", strings.Join(order, ", "), backfillPage)
	q := backfillQueries{
		first: sel + tail,
		next:  fmt.Sprintf("%s WHERE (%s) > (%s)%s", sel, strings.Join(keys, ", "), strings.Join(after, ", "), tail),
	}
	var params, names, match, set, now, want []string
	n := 0
	param := func(name string) string {
		n++
		params = append(params, fmt.Sprintf("$%d::text[]", n))
		names = append(names, name)
		return "v." + name
	}
	for i, k := range chat.Key {
		c := chat.Columns[k]
		v := param(fmt.Sprintf("k%d", i))
		match = append(match, fmt.Sprintf("t.%s = %s::%s", schema.Quote(c.Name), v, c.Cast))
	}
	for j, i := range cols {
		c := chat.Columns[i]
		v := fmt.Sprintf("%s::%s", param(fmt.Sprintf("c%d", j)), c.Cast)
		set = append(set, fmt.Sprintf("%s = %s", schema.Quote(c.Name), v))
		now = append(now, "t."+schema.Quote(c.Name))
		want = append(want, v)
	}
	q.update = fmt.Sprintf("UPDATE %s AS t SET %s FROM unnest(%s) AS v(%s) WHERE %s AND ROW(%s) IS DISTINCT FROM ROW(%s)",
		chat.Ident(), strings.Join(set, ", "), strings.Join(params, ", "), strings.Join(names, ", "),
		strings.Join(match, " AND "), strings.Join(now, ", "), strings.Join(want, ", "))
	return q
}

// readPage reads one page of the source: each row's key and columns as
// text, in key order, after the key after (nil: from the start).
func readPage(ctx context.Context, src *pgxpool.Pool, q backfillQueries, after []*string, width int) ([][]*string, error) {
	sql, args := q.first, []any(nil)
	if after != nil {
		sql = q.next
		for _, v := range after {
			args = append(args, v)
		}
	}
	rows, err := src.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	var page [][]*string
	for rows.Next() {
		row := make([]*string, width)
		ptrs := make([]any, width)
		for i := range row {
			ptrs[i] = &row[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			rows.Close()
			return nil, err
		}
		page = append(page, row)
	}
	return page, rows.Err()
}

// BackfillProgress logs a running backfill's progress every interval, and
// returns the progress func to hand to Backfill.
func BackfillProgress(log *slog.Logger, what string, estimate int64, every time.Duration) func(BackfillResult) {
	start, last := time.Now(), time.Now()
	return func(r BackfillResult) {
		if time.Since(last) < every {
			return
		}
		last = time.Now()
		rate := float64(r.Read) / max(time.Since(start).Seconds(), 1e-3)
		log.Info("backfilling "+what, "rows", r.Read, "of_about", estimate, "updated", r.Updated, "rows_per_sec", int64(rate))
	}
}
