package sink_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/myusta/cdc/change"
	"github.com/myusta/cdc/internal/keyed"
	"github.com/myusta/cdc/internal/pgtest"
	"github.com/myusta/cdc/internal/schema"
	"github.com/myusta/cdc/sink"
)

// emailChange is an upsert of user id with email (and a first name) in a
// source transaction ending at lsn.
func emailChange(t *testing.T, b *change.Batch, tbl *schema.Table, id int, email string, lsn pglogrepl.LSN) change.Change {
	t.Helper()
	c := user{id: uuidOf(id), first: "n"}.change(t, b, tbl, change.OpUpsert)
	c.Values[tbl.Index("email")] = b.Copy(encode(t, tbl.Columns[tbl.Index("email")], email))
	c.LSN = lsn
	return c
}

func emailOf(t *testing.T, p *pgtest.Pair, id int) string {
	t.Helper()
	var e *string
	if err := p.Chat.QueryRow(context.Background(), "SELECT email FROM users WHERE id = $1", uuidOf(id)).Scan(&e); err != nil {
		t.Fatal(err)
	}
	if e == nil {
		return "NULL"
	}
	return *e
}

// TestSink_SwapIsAppliedInSourceOrder: two users swap emails through a
// temporary value; chat's unique index refuses the compacted batch, so the
// sink applies it in source order — within one transaction and across
// three that share the batch — with no dead letter.
func TestSink_SwapIsAppliedInSourceOrder(t *testing.T) {
	ctx := context.Background()
	p := pgtest.NewPair(t, 0)
	pgtest.Exec(t, p.Chat, "CREATE UNIQUE INDEX ON users (email)")
	s := newSink(t, p)
	tbl := s.Table()
	b := change.NewBatch(len(tbl.Columns), tbl.Key)
	for i := 1; i <= 4; i++ {
		b.Add(emailChange(t, b, tbl, i, uuidOf(i)+"@x", 0x100))
	}
	b.Checkpoint = change.Checkpoint{LSN: 0x100}
	if err := s.Apply(ctx, b); err != nil {
		t.Fatal(err)
	}
	b = change.NewBatch(len(tbl.Columns), tbl.Key)
	// One transaction: 1 -> tmp, 2 -> 1's, 1 -> 2's.
	b.Add(emailChange(t, b, tbl, 1, "tmp", 0x200))
	b.Add(emailChange(t, b, tbl, 2, uuidOf(1)+"@x", 0x200))
	b.Add(emailChange(t, b, tbl, 1, uuidOf(2)+"@x", 0x200))
	// The same between 3 and 4, in three transactions.
	b.Add(emailChange(t, b, tbl, 3, "tmp", 0x300))
	b.Add(emailChange(t, b, tbl, 4, uuidOf(3)+"@x", 0x400))
	b.Add(emailChange(t, b, tbl, 3, uuidOf(4)+"@x", 0x500))
	b.Checkpoint = change.Checkpoint{LSN: 0x500}
	if err := s.Apply(ctx, b); err != nil {
		t.Fatal(err)
	}
	for id, want := range map[int]int{1: 2, 2: 1, 3: 4, 4: 3} {
		if got := emailOf(t, p, id); got != uuidOf(want)+"@x" {
			t.Errorf("user %d has email %s, want %s", id, got, uuidOf(want)+"@x")
		}
	}
	if n := s.Stats.DeadLetters.Load(); n != 0 {
		t.Fatalf("%d dead letters for a valid swap", n)
	}
}

// TestSink_RepairOfHalfASwapBringsInTheOtherHalf: a repair of one user
// whose new email the other user of a swap still holds in chat repairs
// that user too, parking the values that trade places.
func TestSink_RepairOfHalfASwapBringsInTheOtherHalf(t *testing.T) {
	ctx := context.Background()
	p := pgtest.NewPair(t, 10)
	p.CopyToChat(t)
	pgtest.Exec(t, p.Chat, "CREATE UNIQUE INDEX ON users (email)")
	var a, b string
	if err := p.Source.QueryRow(ctx, "SELECT min(id::text), max(id::text) FROM users").Scan(&a, &b); err != nil {
		t.Fatal(err)
	}
	pgtest.Exec(t, p.Source, `DO $$ DECLARE x text; y text; BEGIN
SELECT email INTO x FROM users WHERE id = '`+a+`'; SELECT email INTO y FROM users WHERE id = '`+b+`';
UPDATE users SET email = NULL WHERE id = '`+a+`'; UPDATE users SET email = x WHERE id = '`+b+`'; UPDATE users SET email = y WHERE id = '`+a+`'; END $$`)
	s := newSink(t, p)
	src, _ := p.Tables(t, nil)
	keys, _, err := parseKeys(t, p, s, a)
	if err != nil {
		t.Fatal(err)
	}
	res, err := s.Repair(ctx, keys, keyed.PoolFetch(p.Source, src))
	if err != nil {
		t.Fatal(err)
	}
	if res.Stale != 2 || res.Dead != 0 {
		t.Fatalf("repair: %+v; want both halves of the swap stale and repaired", res)
	}
	if diff, err := p.Diff(ctx); err != nil || len(diff) > 0 {
		t.Fatalf("chat differs: %v %v", err, diff)
	}
}

// parseKeys turns ids into keys of the sink's table.
func parseKeys(t *testing.T, p *pgtest.Pair, s *sink.Sink, ids ...string) ([][]byte, []string, error) {
	t.Helper()
	conn, err := p.Chat.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	return keyed.ParseKeys(context.Background(), conn.Conn().PgConn(), s.Table(), ids)
}

// TestSink_OpenTransactionCommitsWithItsLastBatch: batches of one source
// transaction are invisible to chat's readers until the last one commits;
// a repair waits for that commit; Discard rolls an open one back.
func TestSink_OpenTransactionCommitsWithItsLastBatch(t *testing.T) {
	ctx := context.Background()
	p := pgtest.NewPair(t, 0)
	s := newSink(t, p)
	tbl := s.Table()
	open := func(from, to int, lsn pglogrepl.LSN, last bool) {
		t.Helper()
		b := change.NewBatch(len(tbl.Columns), tbl.Key)
		for i := from; i <= to; i++ {
			b.Add(user{id: uuidOf(i), first: "n"}.change(t, b, tbl, change.OpUpsert))
		}
		b.Open = !last
		if last {
			b.Checkpoint = change.Checkpoint{LSN: lsn}
		}
		if err := s.Apply(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	open(1, 100, 0, false)
	open(101, 200, 0, false)
	if n := count(t, p, "true"); n != 0 {
		t.Fatalf("chat's readers see %d rows of an unfinished transaction", n)
	}
	repaired := make(chan error, 1)
	go func() {
		keys, _, _ := parseKeys(t, p, s, uuidOf(500))
		_, err := s.Repair(ctx, keys, func(context.Context, [][]byte) (map[string][][]byte, error) { return nil, nil })
		repaired <- err
	}()
	select {
	case err := <-repaired:
		t.Fatalf("a repair ran inside the open transaction (%v)", err)
	case <-time.After(300 * time.Millisecond):
	}
	open(201, 250, 0x900, true)
	if err := <-repaired; err != nil {
		t.Fatal(err)
	}
	if n := count(t, p, "true"); n != 250 {
		t.Fatalf("%d rows after the last batch, want 250", n)
	}
	if cp, _, _ := s.Checkpoint(ctx); cp.LSN != 0x900 {
		t.Fatalf("checkpoint %s", cp.LSN)
	}
	open(251, 300, 0, false)
	s.Discard()
	open(301, 310, 0xa00, true) // a new transaction on a fresh connection
	if n := count(t, p, "true"); n != 260 {
		t.Fatalf("%d rows; want 260: the discarded batch must be rolled back", n)
	}
}
