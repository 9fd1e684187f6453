package reconcile

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/myusta/cdc/change"
	"github.com/myusta/cdc/internal/keyed"
	"github.com/myusta/cdc/internal/pgtest"
	"github.com/myusta/cdc/internal/retry"
	"github.com/myusta/cdc/internal/schema"
	"github.com/myusta/cdc/sink"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// setup returns a reconciler for a pair whose chat table holds a copy of
// the source's users.
func setup(t *testing.T, users int, opts Options) (*pgtest.Pair, *Reconciler, *sink.Sink) {
	t.Helper()
	p := pgtest.NewPair(t, users)
	p.CopyToChat(t)
	st, ct := loadTables(t, p)
	sk := sink.New(p.Chat, ct, sink.Options{Slot: p.Slot, Logger: quiet,
		Retry: retry.Policy{Initial: 10 * time.Millisecond, Max: 100 * time.Millisecond, Multiplier: 2, Loud: 3}})
	t.Cleanup(sk.Close)
	if opts.Logger == nil {
		opts.Logger = quiet
	}
	if opts.Interval == 0 {
		opts.Interval, opts.Multiplier = time.Minute, 3
	}
	return p, New(Side{Pool: p.Source, Table: st}, Side{Pool: p.Chat, Table: ct}, sk, opts), sk
}

// loadTables describes the pair's source and chat tables as they are now.
func loadTables(t *testing.T, p *pgtest.Pair) (src, chat *schema.Table) {
	t.Helper()
	return p.Tables(t, nil)
}

// seq selects seeded rows by their sequence number (emails are
// user<g>-….@example.com).
func seq(gs string) string {
	return "split_part(split_part(email, '-', 1), 'user', 2) IN (" + gs + ")"
}

// drift damages chat, for recent and for old rows: 3 rows deleted
// (missing), 3 changed (stale) and 3 rows the source does not have
// (extra). Seeded row g was updated g seconds ago (rows 1001+: over 16
// minutes); rows 1–9 are first made recent on
// both sides alike.
func drift(t *testing.T, p *pgtest.Pair) {
	t.Helper()
	recent := time.Now().Add(-time.Second)
	for _, pool := range []*pgxpool.Pool{p.Source, p.Chat} {
		pgtest.Exec(t, pool, "UPDATE users SET updated_at = $1 WHERE "+seq("'1','2','3','4','5','6','7','8','9'"), recent)
	}
	pgtest.Exec(t, p.Chat, "DELETE FROM users WHERE "+seq("'1','2','3','1001','1002','1003'"))
	pgtest.Exec(t, p.Chat, "UPDATE users SET status = 'tampered' WHERE "+seq("'4','5','6','1004','1005','1006'"))
	pgtest.Exec(t, p.Chat, `INSERT INTO users (id, first_name, updated_at)
SELECT gen_random_uuid(), 'ghost', t FROM generate_series(1, 3), (VALUES (now()), (now() - interval '5 hours')) v(t)`)
}

func TestVerifyAndFull_FindAndRepairDrift(t *testing.T) {
	ctx := context.Background()
	settle = 100 * time.Millisecond
	p, r, _ := setup(t, 5000, Options{})
	rep, err := r.Verify(ctx, true)
	if err != nil || !rep.Consistent {
		t.Fatalf("an exact copy must verify: %+v %v", rep, err)
	}
	drift(t, p)
	rep, err = r.Verify(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Consistent || rep.Missing != 6 || rep.Stale != 6 || rep.Extra != 6 || len(rep.Drifted) != 18 {
		t.Fatalf("verify --full: %+v", rep)
	}
	for _, d := range rep.Drifted {
		if len(d.ID) != 36 || (d.Kind != keyed.KindMissing && d.Kind != keyed.KindStale && d.Kind != keyed.KindExtra) {
			t.Fatalf("drifted entry %+v", d)
		}
	}
	res, err := r.Full(ctx, true)
	if err != nil || res.Repair.Missing != 6 || res.Repair.Stale != 6 || res.Repair.Extra != 6 {
		t.Fatalf("dry run: %+v %v", res, err)
	}
	if diff, _ := p.Diff(ctx); len(diff) == 0 {
		t.Fatal("a dry run must not repair")
	}
	res, err = r.Full(ctx, false)
	if err != nil || res.Repair.Repairs() != 18 {
		t.Fatalf("full repair: %+v %v", res, err)
	}
	p.WaitEqual(t, time.Second)
	if rep, err = r.Verify(ctx, true); err != nil || !rep.Consistent {
		t.Fatalf("after repair: %+v %v", rep, err)
	}
}

func TestWindow_RepairsOnlyRecentRows(t *testing.T) {
	ctx := context.Background()
	p, r, _ := setup(t, 5000, Options{})
	drift(t, p)
	res, err := r.Window(ctx, 10*time.Minute, false)
	if err != nil {
		t.Fatal(err)
	}
	if res.Repair.Missing != 3 || res.Repair.Stale != 3 || res.Repair.Extra != 3 {
		t.Fatalf("window repairs: %+v", res.Repair)
	}
	// The old drift is outside every window: only the full compare sees it.
	if diff, _ := p.Diff(ctx); len(diff) != 9 {
		t.Fatalf("after the window, %d differences remain, want the 9 old ones: %v", len(diff), diff)
	}
}

// TestHash_EnumOnSourceTextInChat: rows are hashed by value, but an enum
// on the source and its text copy in chat hash alike (by text), so equal
// rows have equal hashes and a changed value still changes the hash; the
// row-text hash (PostgreSQL before 14) behaves the same.
func TestHash_EnumOnSourceTextInChat(t *testing.T) {
	ctx := context.Background()
	p, _, _ := setup(t, 2000, Options{})
	pgtest.Exec(t, p.Source, `CREATE TYPE user_status AS ENUM ('active', 'inactive', 'banned', 'pending', 'deleted')`)
	cfg := p.Config(t)
	pgtest.Exec(t, p.Source, "ALTER PUBLICATION "+cfg.PublicationName+" DROP TABLE users") // its column list pins the type
	pgtest.Exec(t, p.Source, `ALTER TABLE users ALTER COLUMN status TYPE user_status USING status::user_status`)
	st, ct := loadTables(t, p)
	for _, record := range []bool{true, false} {
		r := New(Side{Pool: p.Source, Table: st}, Side{Pool: p.Chat, Table: ct}, nil, Options{Interval: time.Minute, Multiplier: 3, Logger: quiet})
		if !record {
			r.src.recordHash, r.chat.recordHash, r.hashChosen = false, false, true
		}
		// Found counts the keys whose hashes differed (a dry run re-reads
		// them by value before classifying).
		res, err := r.Full(ctx, true)
		if err != nil || res.Found != 0 || r.src.recordHash != record {
			t.Fatalf("record hash %v: equal tables with an enum column: %+v %v", record, res, err)
		}
		pgtest.Exec(t, p.Chat, `UPDATE users SET status = 'banned' WHERE `+seq("'7'"))
		pgtest.Exec(t, p.Chat, `UPDATE users SET first_name = upper(first_name) WHERE `+seq("'8'"))
		if res, err = r.Full(ctx, true); err != nil || res.Found != 2 || res.Repair.Stale != 2 {
			t.Fatalf("record hash %v: a changed enum value and a change of case: %+v %v", record, res, err)
		}
		// Back to the source's values (seeded: status of row g is
		// active/inactive/pending by g % 3, first name First<g>).
		pgtest.Exec(t, p.Chat, `UPDATE users SET status = 'inactive' WHERE `+seq("'7'"))
		pgtest.Exec(t, p.Chat, `UPDATE users SET first_name = 'First8' WHERE `+seq("'8'"))
	}
}

func TestWindow_HandlesSkewedClocks(t *testing.T) {
	ctx := context.Background()
	p, r, _ := setup(t, 1000, Options{})
	// Rows stamped a little in the future and near the window's start.
	pgtest.Exec(t, p.Source, `UPDATE users SET updated_at = now() + interval '90 seconds' WHERE `+seq("'1','2','3'"))
	pgtest.Exec(t, p.Source, `UPDATE users SET updated_at = now() - interval '170 seconds' WHERE `+seq("'4','5','6'"))
	res, err := r.Window(ctx, 3*time.Minute, false)
	if err != nil {
		t.Fatal(err)
	}
	if res.Repair.Stale != 6 {
		t.Fatalf("stale repaired %d, want 6", res.Repair.Stale)
	}
	p.WaitEqual(t, time.Second)
}

// TestWindow_ComparesInSlices: a window of 24k changed rows per side is
// read in several slices of updated_at; drift anywhere in it, and rows
// whose updated_at differs between the sides (so they sit in different
// slices), are each repaired once; a paced run rests between slices.
func TestWindow_ComparesInSlices(t *testing.T) {
	ctx := context.Background()
	p, r, _ := setup(t, 30000, Options{})
	base := time.Now().Add(-time.Second).UTC()
	for _, pool := range []*pgxpool.Pool{p.Source, p.Chat} {
		pgtest.Exec(t, pool, `UPDATE users SET updated_at = $1::timestamptz - (abs(hashtext(id::text)) % 170000) * interval '1 millisecond'
WHERE abs(hashtext(id::text)) % 100 < 80`, base)
	}
	res, err := r.window(ctx, 3*time.Minute, false, 1)
	if err != nil {
		t.Fatal(err)
	}
	if res.Repair.Repairs() != 0 || res.Checked < 2*20000 || res.Slices < 3 || res.Rested <= 0 {
		t.Fatalf("paced run over equal tables: %+v", res)
	}
	changed := "abs(hashtext(id::text)) % 100 < 80 AND abs(hashtext(id::text)) % 1000 "
	pgtest.Exec(t, p.Chat, "DELETE FROM users WHERE "+changed+"= 1")
	pgtest.Exec(t, p.Chat, "UPDATE users SET status = 'tampered' WHERE "+changed+"= 2")
	pgtest.Exec(t, p.Chat, "UPDATE users SET updated_at = updated_at - interval '150 seconds' WHERE "+changed+"= 3")
	var want int64
	if err := p.Source.QueryRow(ctx, "SELECT count(*) FROM users WHERE "+changed+"IN (1, 2, 3)").Scan(&want); err != nil {
		t.Fatal(err)
	}
	res, err = r.Window(ctx, 3*time.Minute, false)
	if err != nil {
		t.Fatal(err)
	}
	if int64(res.Repair.Repairs()) != want || res.Repair.Missing == 0 || res.Repair.Stale == 0 || res.Rested != 0 {
		t.Fatalf("repaired %+v, want %d repairs", res, want)
	}
	p.WaitEqual(t, time.Second)
	// Without an index on updated_at each slice would scan the table: one
	// slice then.
	pgtest.Exec(t, p.Chat, "DROP INDEX users_updated_at_idx")
	pgtest.Exec(t, p.Chat, "UPDATE users SET status = 'tampered' WHERE "+changed+"= 4")
	if res, err = r.window(ctx, 3*time.Minute, false, 1); err != nil || res.Slices != 1 || res.Repair.Stale == 0 {
		t.Fatalf("unindexed: %+v %v", res, err)
	}
	p.WaitEqual(t, time.Second)
}

// TestWindow_SlicesRowsStampedAlike: small slices are read row by row,
// and the slice holding a group of rows one statement stamped alike
// (which no slice of time can split), larger than a slice may hold, is
// compared by bucket sums without reading a row's hash into memory; drift
// among the rows, and a row whose timestamp differs between the sides,
// are each repaired once.
func TestWindow_SlicesRowsStampedAlike(t *testing.T) {
	ctx := context.Background()
	p, r, _ := setup(t, 40000, Options{sliceRows: 4000, rowsAtOnce: 10000})
	stamp := time.Now().Add(-time.Minute).UTC()
	for _, pool := range []*pgxpool.Pool{p.Source, p.Chat} {
		// 10k rows before the group, one millisecond apart, 25k stamped
		// alike, 5k after it.
		pgtest.Exec(t, pool, `WITH n AS (SELECT id, row_number() OVER (ORDER BY id) AS i FROM users)
UPDATE users u SET updated_at = $1::timestamptz + CASE WHEN n.i <= 10000 THEN (n.i - 10001) * interval '1 millisecond'
  WHEN n.i <= 35000 THEN interval '0' ELSE (n.i - 35000) * interval '1 millisecond' END
FROM n WHERE n.id = u.id`, stamp)
	}
	res, err := r.Window(ctx, 3*time.Minute, false)
	if err != nil {
		t.Fatal(err)
	}
	if res.Repair.Repairs() != 0 || res.Checked != 80000 || res.Slices < 3 || res.fetched > 2*15000 {
		t.Fatalf("40,000 rows, 25,000 stamped alike, equal tables, 4,000 rows a slice: %+v, want 80,000 checked in slices, the group's rows not fetched", res)
	}
	pgtest.Exec(t, p.Chat, "DELETE FROM users WHERE "+seq("'10','20000','29990'"))
	pgtest.Exec(t, p.Chat, "UPDATE users SET status = 'tampered' WHERE "+seq("'11','15000','29991'"))
	pgtest.Exec(t, p.Chat, "UPDATE users SET updated_at = updated_at - interval '1 minute' WHERE "+seq("'12'"))
	pgtest.Exec(t, p.Chat, `INSERT INTO users (id, first_name, updated_at) SELECT gen_random_uuid(), 'ghost', $1::timestamptz FROM generate_series(1, 3)`, stamp)
	res, err = r.Window(ctx, 3*time.Minute, false)
	if err != nil {
		t.Fatal(err)
	}
	if got := res.Repair; got.Missing != 3 || got.Stale != 4 || got.Extra != 3 {
		t.Fatalf("repaired %+v, want 3 missing, 4 stale (one of them stamped differently in chat), 3 extra", got)
	}
	p.WaitEqual(t, time.Second)
}

// TestWindow_FailingSideIsNamed: when one side's server ends the
// connection while a slice streams, the run's error is that side's (the
// other side's statement, canceled, is not), and the next run compares
// as before.
func TestWindow_FailingSideIsNamed(t *testing.T) {
	ctx := context.Background()
	p, r, _ := setup(t, 60000, Options{})
	stamp := time.Now().Add(-time.Minute).UTC()
	for _, pool := range []*pgxpool.Pool{p.Source, p.Chat} {
		pgtest.Exec(t, pool, "UPDATE users SET updated_at = $1", stamp)
	}
	for _, side := range []struct {
		name string
		pool *pgxpool.Pool
	}{{"chat", p.Chat}, {"source", p.Source}} {
		killed := make(chan int64, 1)
		stop := make(chan struct{})
		go func() {
			// Ends the slice's statement on this side as soon as it runs.
			var n int64
			defer func() { killed <- n }()
			for n == 0 {
				select {
				case <-stop:
					return
				default:
				}
				_ = side.pool.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
WHERE state = 'active' AND datname = current_database() AND query LIKE '% AS kh, %' AND pid <> pg_backend_pid()`).Scan(&n)
			}
		}()
		_, err := r.Window(ctx, 3*time.Minute, false)
		close(stop)
		if n := <-killed; n == 0 {
			t.Fatalf("%s: the slice's statement was not seen running", side.name)
		}
		if err == nil || !strings.HasPrefix(err.Error(), side.name+": ") || !strings.Contains(err.Error(), "terminat") {
			t.Fatalf("%s's statement terminated: err = %v, want the %s's error", side.name, err, side.name)
		}
		res, err := r.Window(ctx, 3*time.Minute, false)
		if err != nil || res.Checked != 120000 || res.Repair.Repairs() != 0 {
			t.Fatalf("after %s's failure: %+v %v", side.name, res, err)
		}
	}
}

func TestRun_RepairsWithinAFewIntervalsAndNeverOverlaps(t *testing.T) {
	var logs pgtest.Buffer
	var running, overlaps atomic.Int32
	opts := Options{Interval: 100 * time.Millisecond, Multiplier: 3,
		Logger: slog.New(slog.NewJSONHandler(&logs, nil)),
		afterCompare: func() {
			if running.Add(1) > 1 {
				overlaps.Add(1)
			}
			time.Sleep(150 * time.Millisecond) // slower than the interval
			running.Add(-1)
		}}
	p, r, _ := setup(t, 1000, opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	pgtest.Exec(t, p.Source, `UPDATE users SET updated_at = now() WHERE `+seq("'5','50','500'"))
	pgtest.Exec(t, p.Chat, `UPDATE users SET status = 'corrupt' WHERE `+seq("'5','50','500'"))
	p.WaitEqual(t, 10*time.Second)
	time.Sleep(500 * time.Millisecond)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if overlaps.Load() != 0 {
		t.Fatalf("%d runs overlapped", overlaps.Load())
	}
	if r.Stats.Runs.Load() < 2 || r.Stats.Stale.Load() == 0 {
		t.Fatalf("runs %d, stale repairs %d", r.Stats.Runs.Load(), r.Stats.Stale.Load())
	}
	if !strings.Contains(logs.String(), `"level":"WARN","msg":"reconcile run took more than 80% of the interval`) {
		t.Fatalf("no WARN for slow runs:\n%s", logs.String())
	}
}

// TestChunks: leaves are read in groups of at most limit rows, every
// bucket exactly once, a bucket larger than the limit alone.
func TestChunks(t *testing.T) {
	size := map[int64]int64{1: 400, 2: 400, 3: 300, 4: 1500, 5: 10}
	got := chunks([]int64{1, 2, 3, 4, 5}, size, 1000)
	want := [][]int64{{1, 2}, {3}, {4}, {5}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("chunks = %v, want %v", got, want)
	}
	if len(chunks(nil, size, 1000)) != 0 {
		t.Fatal("chunks of nothing")
	}
}

// TestFull_WidespreadDriftIsReadInChunks: when a tenth of 60,000 rows
// drifted, every bucket of the first level differs and all of them are
// compared row by row — more rows than one chunk — and every drifted row
// is still found and repaired.
func TestFull_WidespreadDriftIsReadInChunks(t *testing.T) {
	ctx := context.Background()
	p, r, _ := setup(t, 60_000, Options{})
	pgtest.Exec(t, p.Chat, "UPDATE users SET status = 'drifted' WHERE abs(hashtext(id::text)) % 10 = 0")
	var drifted int
	if err := p.Chat.QueryRow(ctx, "SELECT count(*) FROM users WHERE status = 'drifted'").Scan(&drifted); err != nil {
		t.Fatal(err)
	}
	if drifted <= chunkRows/4 {
		t.Fatalf("only %d rows drifted; the test needs drift in every bucket", drifted)
	}
	res, err := r.Full(ctx, false)
	if err != nil || res.Repair.Stale != drifted {
		t.Fatalf("full repair: %+v %v; want %d stale", res.Repair, err, drifted)
	}
	p.WaitEqual(t, 10*time.Second)
}

// countingRepairer counts the keys handed to Repair.
type countingRepairer struct {
	change.Sink
	keys atomic.Int64
}

func (c *countingRepairer) Repair(ctx context.Context, keys [][]byte, fetch change.Fetch) (change.RepairResult, error) {
	c.keys.Add(int64(len(keys)))
	return c.Sink.Repair(ctx, keys, fetch)
}

// TestWindow_RowsThatCaughtUpAreNotRepaired: rows that differed at the
// compare but are equal by the time the run looks again (the stream caught
// up) are counted as already equal and never reach the repair, which holds
// the writer lock; rows that still differ are repaired.
func TestWindow_RowsThatCaughtUpAreNotRepaired(t *testing.T) {
	ctx := context.Background()
	var p *pgtest.Pair
	restore := ""
	p, r, sk := setup(t, 1000, Options{afterCompare: func() { pgtest.Exec(t, p.Chat, restore) }})
	recent := time.Now().Add(-time.Second)
	for _, pool := range []*pgxpool.Pool{p.Source, p.Chat} {
		if _, err := pool.Exec(ctx, `UPDATE users SET updated_at = $1 WHERE `+seq("'1','2','3','4','5','6'"), recent); err != nil {
			t.Fatal(err)
		}
	}
	var statuses []string
	rows, err := p.Chat.Query(ctx, `SELECT format('UPDATE users SET status = %L WHERE id = %L;', status, id) FROM users WHERE `+seq("'1','2','3'"))
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		statuses = append(statuses, s)
	}
	if rows.Err() != nil || len(statuses) != 3 {
		t.Fatalf("read statuses: %v %v", rows.Err(), statuses)
	}
	restore = strings.Join(statuses, " ")
	pgtest.Exec(t, p.Chat, `UPDATE users SET status = 'behind' WHERE `+seq("'1','2','3','4','5','6'"))
	counter := &countingRepairer{Sink: sk}
	r.repairer = counter
	res, err := r.Window(ctx, 3*time.Minute, false)
	if err != nil {
		t.Fatal(err)
	}
	if res.Found != 6 || res.Repair.Stale != 3 || res.Repair.Same != 3 || counter.keys.Load() != 3 {
		t.Fatalf("found %d, repairs %+v, keys repaired %d; want 6 found, 3 stale, 3 already equal, 3 repaired", res.Found, res.Repair, counter.keys.Load())
	}
	p.WaitEqual(t, time.Second)
}
