package reconcile

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/myusta/cdc/internal/pgtest"
)

// TestPerf_WindowCompare times one windowed compare of 1M rows with 18 %
// changed in the window, by key-hash buckets (what Range does) and by
// shipping every window row's hash (the previous way), for choosing
// between them. PERF=1 runs it (a minute of seeding); it asserts only that
// both ways agree the tables are equal.
func TestPerf_WindowCompare(t *testing.T) {
	if os.Getenv("PERF") == "" {
		t.Skip("a measurement, not a test: PERF=1 runs it")
	}
	ctx := context.Background()
	p, r, _ := setup(t, 1_000_000, Options{})
	upd := `UPDATE users SET status = 'window', updated_at = $1::timestamptz - (abs(hashtext(id::text)) % 170) * interval '1 second'
WHERE abs(hashtext(id::text)) % 100 < 18`
	base := time.Now().UTC().Format(time.RFC3339Nano)
	for _, pool := range []*pgxpool.Pool{p.Source, p.Chat} {
		pgtest.Exec(t, pool, upd, base)
		pgtest.Exec(t, pool, "VACUUM ANALYZE users")
	}
	var now time.Time
	if err := p.Source.QueryRow(ctx, "SELECT now()").Scan(&now); err != nil {
		t.Fatal(err)
	}
	filter := r.src.sliceFilter(now.Add(-3*time.Minute), time.Time{}, true, time.Time{})
	for rep := 0; rep < 3; rep++ {
		start := time.Now()
		d, n, m, err := bucketDiff(ctx, r.src, r.chat, filter, nil)
		if err != nil || !d.empty() {
			t.Fatalf("buckets: %v, %d keys differ", err, len(d.keys()))
		}
		buckets := time.Since(start)
		start = time.Now()
		src, err := r.src.hashes(ctx, filter)
		if err != nil {
			t.Fatal(err)
		}
		chat, err := r.chat.hashes(ctx, filter)
		if err != nil {
			t.Fatal(err)
		}
		if a, b, c := diff(src, chat); len(a)+len(b)+len(c) != 0 {
			t.Fatal("row hashes differ")
		}
		perRow := time.Since(start)
		start = time.Now()
		res, err := r.Window(ctx, 3*time.Minute, true)
		if err != nil || res.Found != 0 {
			t.Fatalf("window: %+v %v", res, err)
		}
		took := time.Since(start)
		paced, err := r.window(ctx, 3*time.Minute, true, 2)
		if err != nil || paced.Found != 0 {
			t.Fatalf("paced window: %+v %v", paced, err)
		}
		t.Logf("window of %d+%d rows: buckets %s, per-row hashes %s, Window %s (%d slices), paced %s reading in %d slices",
			n, m, buckets.Round(time.Millisecond), perRow.Round(time.Millisecond), took.Round(time.Millisecond), res.Slices,
			(paced.Took - paced.Rested).Round(time.Millisecond), paced.Slices)
	}
}

// TestPerf_WindowStampedAlike times window runs over 1M rows one UPDATE
// stamped alike on both sides, unpaced and paced as cdc run's scheduled
// run is. PERF=1 runs it; it asserts only that the tables compare equal.
func TestPerf_WindowStampedAlike(t *testing.T) {
	if os.Getenv("PERF") == "" {
		t.Skip("a measurement, not a test: PERF=1 runs it")
	}
	ctx := context.Background()
	p, r, _ := setup(t, 1_000_000, Options{})
	stamp := time.Now().UTC()
	for _, pool := range []*pgxpool.Pool{p.Source, p.Chat} {
		pgtest.Exec(t, pool, "UPDATE users SET status = 'alike', updated_at = $1", stamp)
		pgtest.Exec(t, pool, "VACUUM ANALYZE users")
	}
	for _, pace := range []float64{0, 2, 0} {
		start := time.Now()
		res, err := r.window(ctx, 3*time.Minute, false, pace)
		if err != nil || res.Repair.Repairs() != 0 {
			t.Fatalf("%+v %v", res, err)
		}
		t.Logf("pace %g: %s, %d slices, rested %s, %d rows compared", pace, time.Since(start).Round(time.Millisecond),
			res.Slices, res.Rested.Round(time.Millisecond), res.Checked)
	}
}
