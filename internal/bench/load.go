package bench

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// loadIDs reads every user id of the source.
func loadIDs(ctx context.Context, pool *pgxpool.Pool) ([]string, error) {
	rows, err := pool.Query(ctx, "SELECT id::text FROM users")
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

const updateOne = `UPDATE users SET status = $2, updated_at = clock_timestamp() WHERE id = $1`

// makeBacklog writes, with every consumer stopped: one transaction updating
// 40% of the rows, then rows/10 single-row update transactions from clients
// concurrent clients, then the marker row. It returns how many row changes
// it made.
func makeBacklog(ctx context.Context, pool *pgxpool.Pool, ids []string, clients int, marker string, seed uint64) (int, error) {
	tag, err := pool.Exec(ctx, `UPDATE users SET status = 'backlog', updated_at = clock_timestamp() WHERE abs(hashtext(id::text || $1)) % 100 < 40`,
		fmt.Sprint(seed))
	if err != nil {
		return 0, fmt.Errorf("bulk update: %w", err)
	}
	changes := int(tag.RowsAffected())
	singles := len(ids) / 10
	var next atomic.Int64
	errs := make(chan error, clients)
	var wg sync.WaitGroup
	for c := 0; c < clients; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(c)))
			for next.Add(1) <= int64(singles) {
				if _, err := pool.Exec(ctx, updateOne, ids[rng.IntN(len(ids))], "single"); err != nil {
					errs <- err
					return
				}
			}
		}(c)
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return 0, fmt.Errorf("single-row updates: %w", err)
	}
	if err := insertMarker(ctx, pool, marker); err != nil {
		return 0, err
	}
	return changes + singles + 1, nil
}

func insertMarker(ctx context.Context, pool *pgxpool.Pool, marker string) error {
	_, err := pool.Exec(ctx, `INSERT INTO users (id, first_name, updated_at) VALUES ($1, 'marker', clock_timestamp())`, marker)
	if err != nil {
		return fmt.Errorf("insert marker: %w", err)
	}
	return nil
}

// waitMarker waits until the marker row is visible in chat.
func waitMarker(ctx context.Context, chat *pgxpool.Pool, marker string) error {
	for {
		var ok bool
		if err := chat.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM users WHERE id = $1)", marker).Scan(&ok); err != nil {
			return err
		}
		if ok {
			return nil
		}
		if err := sleep(ctx, 5*time.Millisecond); err != nil {
			return err
		}
	}
}

// steadyLoad makes tps single-row update transactions per second for d,
// paced evenly across workers, and returns how many it made and the
// percentiles of their own duration (statement + commit on the source), in
// ms: latency a consumer cannot remove, since updated_at is set before the
// commit.
func steadyLoad(ctx context.Context, pool *pgxpool.Pool, ids []string, tps int, d time.Duration, workers int, log io.Writer) (int64, [3]float64, error) {
	var done atomic.Int64
	var mu sync.Mutex
	var durations []float64
	start := time.Now()
	interval := time.Duration(float64(time.Second) * float64(workers) / float64(tps))
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 99))
			next := start.Add(time.Duration(w) * interval / time.Duration(workers))
			for time.Since(start) < d {
				if wait := time.Until(next); wait > 0 {
					time.Sleep(wait)
				}
				next = next.Add(interval)
				t0 := time.Now()
				if _, err := pool.Exec(ctx, updateOne, ids[rng.IntN(len(ids))], "steady"); err != nil {
					errs <- err
					return
				}
				took := float64(time.Since(t0).Microseconds()) / 1000
				mu.Lock()
				durations = append(durations, took)
				mu.Unlock()
				done.Add(1)
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return done.Load(), [3]float64{}, fmt.Errorf("steady load: %w", err)
	}
	return done.Load(), quantiles(durations), nil
}

// latencyTrigger records, for every row a consumer writes into chat, the
// source's updated_at (set by clock_timestamp() in the source transaction)
// and the chat clock when the row is written. Both servers share this
// machine's clock. ALWAYS makes it fire in native apply workers too, which
// run with an empty search_path (hence the qualified names).
const latencyTrigger = `
CREATE TABLE IF NOT EXISTS public.bench_latency (src timestamptz, dst timestamptz);
CREATE OR REPLACE FUNCTION public.bench_latency() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO public.bench_latency VALUES (NEW.updated_at, clock_timestamp()); RETURN NULL; END $$;
DROP TRIGGER IF EXISTS bench_latency ON public.users;
CREATE TRIGGER bench_latency AFTER INSERT OR UPDATE ON public.users FOR EACH ROW EXECUTE FUNCTION public.bench_latency();
ALTER TABLE public.users ENABLE ALWAYS TRIGGER bench_latency;
TRUNCATE public.bench_latency;`

// percentiles returns p50, p95, p99 of source commit -> chat write in ms
// for rows written at or after since.
func percentiles(ctx context.Context, chat *pgxpool.Pool, since time.Time) ([3]float64, int, error) {
	var p [3]float64
	var n int
	err := chat.QueryRow(ctx, `SELECT count(*), COALESCE(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), 0),
       COALESCE(percentile_cont(0.95) WITHIN GROUP (ORDER BY ms), 0), COALESCE(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms), 0)
FROM (SELECT extract(epoch FROM dst - src) * 1000 AS ms FROM bench_latency WHERE src >= $1) l`, since).Scan(&n, &p[0], &p[1], &p[2])
	return p, n, err
}
