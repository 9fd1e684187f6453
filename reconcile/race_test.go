package reconcile

import (
	"context"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/myusta/cdc/internal/demo"
	"github.com/myusta/cdc/internal/pgtest"
	"github.com/myusta/cdc/internal/retry"
	"github.com/myusta/cdc/migrations"
	"github.com/myusta/cdc/replication"
	"github.com/myusta/cdc/sink"
)

// TestRepairs_RaceTheStreamWithoutStaleOrResurrectedRows runs repairs
// (window and full, every 50 ms) against a live stream under a mixed
// workload on a small hot table, while chat rows are damaged behind cdc's
// back. A trigger logs every chat write with its version (updated_at, a
// clock_timestamp() on the source, so it grows with every change of a row)
// and its writer. No repair may write a version older than one the stream
// already wrote, nor write a row after the stream deleted it (the workload
// never reuses an id). Each cycle also stops the workload and the
// reconciler at the same instant, lets the stream catch up, and requires
// chat to equal the source row by row.
func TestRepairs_RaceTheStreamWithoutStaleOrResurrectedRows(t *testing.T) {
	p := pgtest.NewPair(t, 300)
	pgtest.Exec(t, p.Chat, `
CREATE TABLE write_log (seq bigserial, id uuid, version timestamptz, op text, writer text);
CREATE FUNCTION log_write() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO write_log (id, version, op, writer) SELECT r.id, r.updated_at, TG_OP, current_setting('application_name')
  FROM (SELECT (CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END).*) r;
  RETURN NULL;
END $$;
CREATE TRIGGER log_write AFTER INSERT OR UPDATE OR DELETE ON users FOR EACH ROW EXECUTE FUNCTION log_write();`)
	cfg := p.Config(t)
	ctx := context.Background()
	fast := retry.Policy{Initial: 10 * time.Millisecond, Max: 200 * time.Millisecond, Multiplier: 2, Loud: 5}
	if _, err := replication.Preflight(ctx, p.Source, replication.Source{Spec: migrations.SpecFor(cfg).Source(),
		Publication: cfg.PublicationName, Secret: cfg.SecretColumns}); err != nil {
		t.Fatal(err)
	}
	srcTable, chatTable := p.Tables(t, cfg)
	sk := sink.New(p.Chat, chatTable, sink.Options{Slot: p.Slot, Retry: fast, Logger: quiet})
	defer sk.Close()
	st := replication.New(p.Source, sk, replication.Options{SourceURL: p.SourceURL, Slot: p.Slot, Publication: cfg.PublicationName,
		Table: srcTable, BatchMaxRows: 100, StatusInterval: time.Second, Retry: fast, Logger: quiet})
	sctx, stopStream := context.WithCancel(ctx)
	streamDone := make(chan error, 1)
	go func() { streamDone <- st.Run(sctx) }()
	defer func() { stopStream(); <-streamDone }()
	p.WaitEqual(t, 30*time.Second)

	w, err := demo.NewWorkload(ctx, p.Source, 3)
	if err != nil {
		t.Fatal(err)
	}
	w.InsertPct, w.DeletePct = 15, 15
	// Repairs go through a second sink, as from another process (cdc
	// reconcile beside cdc run): only the chat writer lock orders them with
	// the stream.
	repairs := sink.New(p.Chat, chatTable, sink.Options{Slot: p.Slot, Retry: fast, Logger: quiet})
	defer repairs.Close()
	r := New(Side{Pool: p.Source, Table: srcTable}, Side{Pool: p.Chat, Table: chatTable}, repairs, Options{
		Interval: 50 * time.Millisecond, Multiplier: 3, FullInterval: 120 * time.Millisecond, Sync: st.Sync, Logger: quiet})

	var repaired int64
	for cycle := 0; cycle < 6; cycle++ {
		cctx, stop := context.WithCancel(ctx)
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); w.Run(cctx, 400, quiet) }()
		go func() { defer wg.Done(); _ = r.Run(cctx) }()
		damage, stopDamage := context.WithCancel(cctx)
		damaged := make(chan struct{})
		go func() {
			defer close(damaged)
			rng := rand.New(rand.NewPCG(uint64(cycle), 1))
			for damage.Err() == nil {
				sql := `INSERT INTO users (id, first_name, updated_at) VALUES (gen_random_uuid(), 'ghost', now())`
				switch rng.IntN(3) {
				case 0:
					sql = `UPDATE users SET status = 'corrupt' WHERE id = (SELECT id FROM users ORDER BY random() LIMIT 1)`
				case 1:
					sql = `DELETE FROM users WHERE id = (SELECT id FROM users ORDER BY random() LIMIT 1)`
				}
				_, _ = p.Chat.Exec(damage, "SET application_name = 'damage'; "+sql+"; RESET application_name")
				time.Sleep(10 * time.Millisecond)
			}
		}()
		time.Sleep(time.Second)
		stopDamage()
		<-damaged
		// Let two more full runs start and end, racing the workload, so
		// all damage is repaired; then stop everything at once.
		for seen := r.Stats.FullRuns.Load(); r.Stats.FullRuns.Load() < seen+2; {
			time.Sleep(10 * time.Millisecond)
		}
		stop()
		wg.Wait()
		// A statement the workload gave up on (its ctx ended) may still be
		// committing on the server; Sync only covers what is committed when
		// it is called, so wait for the source's other sessions to settle.
		for deadline := time.Now().Add(10 * time.Second); ; {
			var busy int
			if err := p.Source.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
  AND backend_type = 'client backend' AND state NOT IN ('idle') AND pid <> pg_backend_pid()`).Scan(&busy); err != nil {
				t.Fatal(err)
			}
			if busy == 0 || time.Now().After(deadline) {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		if err := st.Sync(ctx); err != nil {
			t.Fatal(err)
		}
		if diff, err := p.Diff(ctx); err != nil || len(diff) > 0 {
			for _, d := range diff {
				id := d[strings.LastIndex(d, " ")+1:]
				var a, b string
				_ = p.Source.QueryRow(ctx, "SELECT coalesce((SELECT u::text FROM users u WHERE id = $1), 'none')", id).Scan(&a)
				_ = p.Chat.QueryRow(ctx, "SELECT coalesce((SELECT u::text FROM users u WHERE id = $1), 'none')", id).Scan(&b)
				t.Logf("%s\n  source: %s\n  chat:   %s", d, a, b)
				hist, _ := p.Chat.Query(ctx, "SELECT seq, version::text, op, writer FROM write_log WHERE id = $1 ORDER BY seq", id)
				for hist.Next() {
					var seq int64
					var v, op, w string
					_ = hist.Scan(&seq, &v, &op, &w)
					t.Logf("    log %d %s %s %s", seq, v, op, w)
				}
				hist.Close()
			}
			time.Sleep(3 * time.Second)
			later, _ := p.Diff(ctx)
			t.Logf("3 s later: %d differences (%v); stream position %d, applied %d", len(later), later, st.Stats.Position.Load(), st.Stats.Applied.Load())
			t.Fatalf("cycle %d: chat differs from the source after the stream caught up (a repair left a stale or resurrected row): %v %v", cycle, diff, err)
		}
		repaired = r.Stats.Missing.Load() + r.Stats.Stale.Load() + r.Stats.Extra.Load()
	}
	var byWriter string
	_ = p.Chat.QueryRow(ctx, `SELECT string_agg(writer || ':' || op || '=' || n, ' ') FROM (SELECT writer, op, count(*) n FROM write_log GROUP BY 1, 2) x`).Scan(&byWriter)
	t.Logf("writes: %s", byWriter)
	// The log, write by write: per id, the newest version the stream wrote
	// so far, or that it deleted the row.
	var stale, resurrected, repairWrites int
	rows, err := p.Chat.Query(ctx, `SELECT id::text, version, op, writer FROM write_log ORDER BY seq`)
	if err != nil {
		t.Fatal(err)
	}
	type state struct {
		newest  time.Time
		deleted bool
	}
	seen := map[string]state{}
	for rows.Next() {
		var id, op, writer string
		var version time.Time
		if err := rows.Scan(&id, &version, &op, &writer); err != nil {
			t.Fatal(err)
		}
		s := seen[id]
		switch {
		case writer == "cdc" && op == "DELETE":
			s.deleted = true
		case writer == "cdc":
			if version.After(s.newest) {
				s.newest = version
			}
		case writer == "cdc-repair" && op != "DELETE":
			repairWrites++
			if s.deleted {
				resurrected++
				t.Errorf("repair wrote %s (version %s) after the stream deleted it", id, version.Format(time.RFC3339Nano))
			} else if version.Before(s.newest) {
				stale++
				t.Errorf("repair wrote %s version %s after the stream wrote %s", id, version.Format(time.RFC3339Nano), s.newest.Format(time.RFC3339Nano))
			}
		}
		seen[id] = s
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if stale+resurrected > 0 {
		t.Fatalf("%d stale and %d resurrecting repair writes out of %d", stale, resurrected, repairWrites)
	}
	if repaired == 0 || r.Stats.Runs.Load() < 20 || repairWrites == 0 {
		t.Fatalf("the race did not happen: %d runs, %d repairs", r.Stats.Runs.Load(), repaired)
	}
	t.Logf("%d reconcile runs (%d full) raced the stream, %d repairs (%d repair writes checked against the stream's), chat equal to the source after every cycle",
		r.Stats.Runs.Load(), r.Stats.FullRuns.Load(), repaired, repairWrites)
}
