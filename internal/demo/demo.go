// Package demo holds the reference backend schema, demo data and a change
// generator, shared by `cdc dev`, the tests and the benchmarks.
package demo

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// SourceSchema is the backend's reference users table.
const SourceSchema = `
CREATE TABLE IF NOT EXISTS public.users (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    first_name      text NOT NULL,
    last_name       text,
    email           text UNIQUE,
    phone           text,
    password_hash   text,
    role            text,
    status          text,
    profile_picture text,
    created_at      timestamptz DEFAULT now(),
    updated_at      timestamptz DEFAULT now()
);
CREATE INDEX IF NOT EXISTS users_updated_at_idx ON public.users (updated_at);`

// CreateSchema creates the reference users table if it does not exist.
func CreateSchema(ctx context.Context, pool *pgxpool.Pool) error {
	if _, err := pool.Exec(ctx, SourceSchema); err != nil {
		return fmt.Errorf("create reference schema: %w", err)
	}
	return nil
}

// Seed inserts n demo users.
func Seed(ctx context.Context, pool *pgxpool.Pool, n int) error {
	_, err := pool.Exec(ctx, `
INSERT INTO public.users (first_name, last_name, email, phone, password_hash, role, status, profile_picture, created_at, updated_at)
SELECT 'First' || g, 'Last' || g, 'user' || g || '-' || substr(md5(random()::text), 1, 8) || '@example.com',
       '+1555' || lpad(g::text, 7, '0'), 'pbkdf2$' || md5(random()::text),
       (ARRAY['customer','usta','admin'])[1 + g % 3], (ARRAY['active','inactive','pending'])[1 + g % 3],
       'https://cdn.example.com/p/' || g || '.jpg', now() - (g || ' seconds')::interval, now() - (g || ' seconds')::interval
FROM generate_series(1, $1) g`, n)
	if err != nil {
		return fmt.Errorf("seed %d users: %w", n, err)
	}
	return nil
}

// Workload makes random single-row changes to the users table: mostly
// updates, some inserts and deletes. Each change bumps updated_at with
// clock_timestamp(), so every version of a row is distinct.
type Workload struct {
	Pool *pgxpool.Pool
	// Percentages of inserts and deletes; the rest are updates.
	InsertPct, DeletePct int

	mu  sync.Mutex
	ids []string
	rng *rand.Rand
}

// NewWorkload loads the existing ids of the users table.
func NewWorkload(ctx context.Context, pool *pgxpool.Pool, seed uint64) (*Workload, error) {
	rows, err := pool.Query(ctx, "SELECT id::text FROM public.users")
	if err != nil {
		return nil, fmt.Errorf("load user ids: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("load user ids: %w", err)
	}
	return &Workload{Pool: pool, InsertPct: 20, DeletePct: 10, ids: ids, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))}, nil
}

func (w *Workload) pick() (op int, id string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	r := w.rng.IntN(100)
	switch {
	case r < w.InsertPct || len(w.ids) == 0:
		return 0, ""
	case r < w.InsertPct+w.DeletePct:
		i := w.rng.IntN(len(w.ids))
		id = w.ids[i]
		w.ids[i] = w.ids[len(w.ids)-1]
		w.ids = w.ids[:len(w.ids)-1]
		return 2, id
	default:
		return 1, w.ids[w.rng.IntN(len(w.ids))]
	}
}

// Step makes one change in its own transaction.
func (w *Workload) Step(ctx context.Context) error {
	op, id := w.pick()
	var err error
	switch op {
	case 0:
		var newID string
		err = w.Pool.QueryRow(ctx, `INSERT INTO public.users (first_name, last_name, email, role, status, password_hash, updated_at)
VALUES ('New', 'User ' || substr(md5(random()::text), 1, 6), 'new-' || gen_random_uuid() || '@example.com', 'customer', 'active',
        'pbkdf2$' || md5(random()::text), clock_timestamp()) RETURNING id::text`).Scan(&newID)
		if err == nil {
			w.mu.Lock()
			w.ids = append(w.ids, newID)
			w.mu.Unlock()
		}
	case 1:
		_, err = w.Pool.Exec(ctx, `UPDATE public.users SET status = (ARRAY['active','inactive','pending','banned'])[1 + floor(random()*4)::int],
last_name = CASE WHEN random() < 0.1 THEN NULL ELSE 'Updated ' || substr(md5(random()::text), 1, 6) END,
updated_at = clock_timestamp() WHERE id = $1`, id)
	case 2:
		_, err = w.Pool.Exec(ctx, "DELETE FROM public.users WHERE id = $1", id)
	}
	if err != nil {
		return fmt.Errorf("workload change: %w", err)
	}
	return nil
}

// Run makes about rate changes per second until ctx ends. Errors are logged
// and the load goes on (the database may be restarting under a test).
func (w *Workload) Run(ctx context.Context, rate int, log *slog.Logger) {
	if rate <= 0 {
		return
	}
	const tick = 10 * time.Millisecond
	t := time.NewTicker(tick)
	defer t.Stop()
	var owed float64
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		owed = min(owed+float64(rate)*tick.Seconds(), float64(rate)) // never burst more than a second's worth
		for ; owed >= 1; owed-- {
			if err := w.Step(ctx); err != nil && ctx.Err() == nil {
				log.Warn("demo load", "err", err)
			}
		}
	}
}
