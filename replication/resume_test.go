package replication_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/myusta/cdc/change"
	"github.com/myusta/cdc/internal/pgtest"
	"github.com/myusta/cdc/replication"
	"github.com/myusta/cdc/sink"
)

// crashingSink commits through the real sink, then reports a failure once
// after the crashAfter-th batch, as a process killed between the chat
// commit and the slot confirmation would.
type crashingSink struct {
	*sink.Sink
	crashAfter int32
	applies    atomic.Int32
	open       atomic.Int32 // batches that ended inside a transaction
}

func (c *crashingSink) Apply(ctx context.Context, b *change.Batch) error {
	if err := c.Sink.Apply(ctx, b); err != nil {
		return err
	}
	if b.Open {
		c.open.Add(1)
	}
	if c.applies.Add(1) == c.crashAfter {
		return errors.New("simulated crash after commit")
	}
	return nil
}

func TestStream_LargeTransactionAppliedWholeAfterACrash(t *testing.T) {
	p := pgtest.NewPair(t, 2000)
	p.TrackApplies(t)
	var cs *crashingSink
	r := startWith(t, p, func(s *sink.Sink) change.Sink {
		cs = &crashingSink{Sink: s, crashAfter: 4}
		return cs
	}, func(o *replication.Options) { o.BatchMaxRows = 100 })
	p.WaitEqual(t, 30*time.Second) // the first copy is not a batch: no crash yet

	// One transaction of 2000 updates: written in chunks of 100 rows into
	// one chat transaction; the "crash" after the 4th chunk makes the
	// stream reconnect, the chat transaction is rolled back, and the whole
	// source transaction is applied again from its start.
	pgtest.Exec(t, p.Source, `UPDATE users SET status = 'bulk', updated_at = clock_timestamp()`)
	p.WaitEqual(t, 60*time.Second)
	r.stop(t)

	if cs.open.Load() < 4+19 {
		t.Fatalf("expected the transaction to be written in open batches twice (4 before the crash, 19 after), got %d", cs.open.Load())
	}
	total, twice := p.Applies(t)
	if twice != 0 {
		t.Fatalf("%d row versions were applied more than once", twice)
	}
	if want := 2000 + 2000; total != want { // first copy + the bulk update, once: the first try was rolled back
		t.Fatalf("applied %d row versions, want %d", total, want)
	}
	if r.stream.Stats.Reconnects.Load() < 1 {
		t.Fatal("the simulated crash did not make the stream reconnect")
	}
}

func TestStream_CleanRestartAppliesNothingTwice(t *testing.T) {
	p := pgtest.NewPair(t, 1000)
	p.TrackApplies(t)
	r := start(t, p, nil)
	p.WaitEqual(t, 30*time.Second) // first copy
	pgtest.Exec(t, p.Source, `UPDATE users SET status = 'one', updated_at = clock_timestamp() WHERE email LIKE 'user1%'`)
	p.WaitEqual(t, 30*time.Second)
	r.stop(t)
	if got := r.stream.Stats.Updates.Load(); got == 0 {
		t.Fatal("first run streamed no updates")
	}

	r = start(t, p, nil)
	pgtest.Exec(t, p.Source, `INSERT INTO users (first_name, updated_at) SELECT 'second run ' || g, clock_timestamp() FROM generate_series(1, 7) g`)
	p.WaitEqual(t, 30*time.Second)
	r.stop(t)
	st := &r.stream.Stats
	if got := st.Inserts.Load() + st.Updates.Load() + st.Deletes.Load(); got != 7 {
		t.Fatalf("second run received %d changes, want exactly the 7 made after the restart", got)
	}
	if _, twice := p.Applies(t); twice != 0 {
		t.Fatalf("%d row versions applied twice", twice)
	}
}

func TestStream_IdleTableDoesNotPinWAL(t *testing.T) {
	p := pgtest.NewPair(t, 100)
	// The production status interval: confirmations must follow the
	// server's WAL within about 30 s even though users never changes.
	start(t, p, func(o *replication.Options) { o.StatusInterval = 10 * time.Second })
	p.WaitEqual(t, 30*time.Second)
	pgtest.Exec(t, p.Source, `CREATE TABLE other (id int, pad text)`)
	ctx := context.Background()
	var target pglogrepl.LSN
	deadline := time.Now().Add(30 * time.Second)
	for {
		pgtest.Exec(t, p.Source, `INSERT INTO other SELECT g, repeat('x', 200) FROM generate_series(1, 1000) g`)
		var cur, confirmed string
		if err := p.Source.QueryRow(ctx, `SELECT pg_current_wal_lsn()::text, confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1`, p.Slot).
			Scan(&cur, &confirmed); err != nil {
			t.Fatal(err)
		}
		c, _ := pglogrepl.ParseLSN(confirmed)
		if target == 0 {
			target, _ = pglogrepl.ParseLSN(cur)
		}
		if c >= target {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("slot still confirms %s after 30 s; WAL written by another table reached %s", c, target)
		}
		time.Sleep(500 * time.Millisecond)
	}
}
