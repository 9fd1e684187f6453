package replication

import (
	"testing"
	"time"

	"github.com/myusta/cdc/change"
)

// TestLinger_DeductsTheWalsendersLead: a small batch lingers for
// BATCH_MAX_WAIT less the time the source's walsender held its first
// change after the commit, so a change the source sent late is written
// at once instead of waiting longer still.
func TestLinger_DeductsTheWalsendersLead(t *testing.T) {
	const wait = 50 * time.Millisecond
	for _, c := range []struct {
		name      string
		lead      time.Duration // walsender's send time − source commit time
		lingerFor time.Duration
	}{
		{"sent at once", 0, wait},
		{"sent 20ms after its commit", 20 * time.Millisecond, wait - 20*time.Millisecond},
		{"sent after more than BATCH_MAX_WAIT", 3 * wait, 0},
		{"source clock stepped back", -time.Second, wait},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := &reader{s: &Stream{opts: Options{BatchMaxWait: wait, BatchMaxRows: 100, StatusInterval: 10 * time.Second}}, cur: change.NewBatch(1, []int{0})}
			r.lastStatus = time.Now()
			commit := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC) // the source's clock; cdc's may differ
			r.tx.commit = commit
			r.cur.Add(change.Change{Op: change.OpUpsert, Values: [][]byte{[]byte("k1")}, CommitTime: commit})
			r.added(commit.Add(c.lead))
			if got := r.lingerFor(); got != c.lingerFor {
				t.Fatalf("lingerFor = %s, want %s", got, c.lingerFor)
			}
			if want := c.lingerFor > 0; r.lingering() != want {
				t.Fatalf("lingering = %v right after the first change, want %v", !want, want)
			}
			if due := r.readDeadline(r.s.opts.StatusInterval); due.Sub(r.cur.Started) != c.lingerFor {
				t.Fatalf("a blocked read would wake %s after the batch started, want %s", due.Sub(r.cur.Started), c.lingerFor)
			}
			// Later changes of the batch do not move its lead.
			r.cur.Add(change.Change{Op: change.OpUpsert, Values: [][]byte{[]byte("k2")}, CommitTime: commit})
			r.added(commit.Add(c.lead + time.Hour))
			if got := r.lingerFor(); got != c.lingerFor {
				t.Fatalf("after a second change lingerFor = %s, want %s", got, c.lingerFor)
			}
		})
	}
}

// TestLinger_OnlyWhenTheLoadWouldKeepTheWriterBusy: a change that finds the
// writer idle is written at once unless transactions arrive less than one
// write apart; the averages follow the load.
func TestLinger_OnlyWhenTheLoadWouldKeepTheWriterBusy(t *testing.T) {
	r := &reader{s: &Stream{opts: Options{BatchMaxWait: 10 * time.Millisecond, BatchMaxRows: 100}}, cur: change.NewBatch(1, []int{0}), pace: newPace()}
	r.cur.Add(change.Change{Op: change.OpUpsert, Values: [][]byte{[]byte("k1")}})
	if r.lingering() {
		t.Fatal("lingering at the start (an idle load)")
	}
	src := time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)
	feed := func(n int, gap, write time.Duration) {
		for range n {
			src = src.Add(gap)
			r.pace.committed(src)
			r.pace.sent = time.Now().Add(-write)
			r.pace.written()
		}
	}
	feed(50, 10*time.Millisecond, time.Millisecond) // 100 tps, 1 ms writes
	if r.lingering() {
		t.Fatalf("lingering at 100 tps with 1 ms writes (gap %s, write %s)", r.pace.gap, r.pace.write)
	}
	feed(50, 2*time.Millisecond, time.Millisecond) // 500 tps: half busy
	if r.lingering() {
		t.Fatalf("lingering at 500 tps with 1 ms writes (gap %s, write %s)", r.pace.gap, r.pace.write)
	}
	feed(50, 500*time.Microsecond, time.Millisecond) // 2,000 tps
	if !r.lingering() {
		t.Fatalf("not lingering at 2,000 tps with 1 ms writes (gap %s, write %s)", r.pace.gap, r.pace.write)
	}
	feed(50, 50*time.Millisecond, time.Millisecond) // the load drops
	if r.lingering() {
		t.Fatalf("still lingering after the load dropped to 20 tps (gap %s, write %s)", r.pace.gap, r.pace.write)
	}
}
