package sink_test

import (
	"context"
	"testing"
	"time"

	"github.com/myusta/cdc/change"
	"github.com/myusta/cdc/internal/pgtest"
)

// TestSink_OnBatchAndFailureCounts checks what the metrics hook sees of a
// batch (ops, dead letters, latency from the oldest commit) and that a
// write that fails and is retried counts once in Failures, with Failing
// back at 0 after the success.
func TestSink_OnBatchAndFailureCounts(t *testing.T) {
	ctx := context.Background()
	p := pgtest.NewPair(t, 0)
	pgtest.Exec(t, p.Chat, `ALTER TABLE users ADD CONSTRAINT no_poison CHECK (first_name <> 'poison')`)
	var seen []change.BatchInfo
	s := newSink(t, p, func(b change.BatchInfo) { seen = append(seen, b) })
	tbl := s.Table()

	b := change.NewBatch(len(tbl.Columns), tbl.Key)
	b.Add(user{id: uuidOf(1), first: "first"}.change(t, b, tbl, change.OpUpsert))
	b.Checkpoint = change.Checkpoint{LSN: 0x50}
	if err := s.Apply(ctx, b); err != nil {
		t.Fatal(err)
	}
	// Kill the writer connection: the next write fails once, then succeeds.
	var killed int
	if err := p.Chat.QueryRow(ctx, `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
WHERE datname = current_database() AND application_name = 'cdc' AND pid <> pg_backend_pid() AND query LIKE '%cdc_checkpoint%'`).Scan(&killed); err != nil || killed != 1 {
		t.Fatalf("terminated %d writer connections (want 1): %v", killed, err)
	}

	b = change.NewBatch(len(tbl.Columns), tbl.Key)
	oldest := time.Now().Add(-300 * time.Millisecond)
	for i, name := range []string{"a", "b", "poison", "c"} {
		c := user{id: uuidOf(i + 2), first: name}.change(t, b, tbl, change.OpUpsert)
		c.CommitTime = oldest.Add(time.Duration(i) * 10 * time.Millisecond)
		b.Add(c)
	}
	b.Add(user{id: uuidOf(1)}.change(t, b, tbl, change.OpDelete))
	b.Checkpoint = change.Checkpoint{LSN: 0x60}
	if err := s.Apply(ctx, b); err != nil {
		t.Fatal(err)
	}
	if f, g := s.Stats.Failures.Load(), s.Stats.Failing.Load(); f != 1 || g != 0 {
		t.Errorf("Failures %d, Failing %d after one failed attempt and a success; want 1, 0", f, g)
	}
	if len(seen) != 2 || seen[0].Latency != 0 || seen[0].Upserts != 1 {
		t.Fatalf("OnBatch saw %+v; want two batches, the first one upsert without commit time", seen)
	}
	got := seen[1]
	if got.Received != 5 || got.Upserts != 4 || got.Deletes != 1 || got.DeadLetters != 1 || got.Truncate || got.Took <= 0 {
		t.Errorf("batch info %+v; want 5 received, 4 upserts (one refused), 1 delete, 1 dead letter", got)
	}
	if got.Latency < 300*time.Millisecond || got.Latency > time.Minute {
		t.Errorf("latency %s, want from the oldest commit (at least 300ms)", got.Latency)
	}
}
