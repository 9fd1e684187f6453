package main

import (
	"context"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/myusta/cdc/internal/pgtest"
)

// watcher is a chat reader that polls a count while cdc writes and
// remembers every value it saw.
type watcher struct {
	stop  chan struct{}
	done  chan struct{}
	mu    sync.Mutex
	seen  map[int]int // value -> times seen
	final func() int  // one more look, after the watcher stopped
}

func watchCount(t *testing.T, pool *pgxpool.Pool, query string) *watcher {
	t.Helper()
	w := &watcher{stop: make(chan struct{}), done: make(chan struct{}), seen: map[int]int{},
		final: func() int { return count(t, pool, query) }}
	go func() {
		defer close(w.done)
		for {
			select {
			case <-w.stop:
				return
			default:
			}
			var n int
			if err := pool.QueryRow(context.Background(), query).Scan(&n); err == nil {
				w.mu.Lock()
				w.seen[n]++
				w.mu.Unlock()
			}
		}
	}()
	return w
}

// values stops the watcher and returns what it saw, sorted, and what a
// last look sees (the watcher may have stopped between two looks).
func (w *watcher) values() []int {
	close(w.stop)
	<-w.done
	w.seen[w.final()]++
	var out []int
	for v := range w.seen {
		out = append(out, v)
	}
	sort.Ints(out)
	return out
}

func count(t *testing.T, pool *pgxpool.Pool, query string) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(), query).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func waitCount(t *testing.T, pool *pgxpool.Pool, query string, want int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		n := count(t, pool, query)
		if n == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s = %d, want %d within %s", query, n, want, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestAtomic_LargeTransactionIsWholeInChat: a 30,000-row source
// transaction, larger than a batch, becomes visible in chat in one commit
// (a reader polling during the apply sees none of it or all of it); cdc
// killed with -9 while it writes one leaves none of it in chat, and after
// a restart all of it.
func TestAtomic_LargeTransactionIsWholeInChat(t *testing.T) {
	for _, batch := range []string{"10000", "1000"} {
		t.Run("BATCH_MAX_ROWS="+batch, func(t *testing.T) {
			const rows = 30_000
			p := pgtest.NewPair(t, rows)
			p.TrackApplies(t)
			env := with(p.Env(), "BATCH_MAX_ROWS", batch, "SYNC_INTERVAL_MINUTES", "60", "FULL_RECONCILE_INTERVAL", "0", "LOG_LEVEL", "info")
			c := startCDC(t, env, "run")
			p.WaitEqual(t, time.Minute)

			suspended := "SELECT count(*) FROM users WHERE status = 'suspended'"
			w := watchCount(t, p.Chat, suspended)
			pgtest.Exec(t, p.Source, "UPDATE users SET status = 'suspended', updated_at = now()")
			waitCount(t, p.Chat, suspended, rows, time.Minute)
			if seen := w.values(); len(seen) != 2 || seen[0] != 0 || seen[1] != rows {
				t.Fatalf("a chat reader saw the transaction in parts: counts %v", seen)
			}

			// Kill cdc while it writes the next one into its open chat
			// transaction (the writer's backend has an xid: it wrote rows).
			reinstated := "SELECT count(*) FROM users WHERE status = 'reinstated'"
			pgtest.Exec(t, p.Source, "UPDATE users SET status = 'reinstated', updated_at = now()")
			deadline := time.Now().Add(time.Minute)
			for count(t, p.Chat, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'cdc'
  AND backend_xid IS NOT NULL AND pid <> pg_backend_pid()`) == 0 {
				if time.Now().After(deadline) || count(t, p.Chat, reinstated) != 0 {
					t.Fatal("did not catch cdc writing the transaction")
				}
				time.Sleep(time.Millisecond)
			}
			c.kill()
			for i := 0; i < 20; i++ {
				if n := count(t, p.Chat, reinstated); n != 0 {
					t.Fatalf("after kill -9 mid-transaction chat shows %d rows of it", n)
				}
				time.Sleep(50 * time.Millisecond)
			}
			w = watchCount(t, p.Chat, reinstated)
			c = startCDC(t, env, "run")
			waitCount(t, p.Chat, reinstated, rows, time.Minute)
			if seen := w.values(); len(seen) != 2 || seen[0] != 0 || seen[1] != rows {
				t.Fatalf("after the restart a chat reader saw the transaction in parts: counts %v", seen)
			}
			p.WaitEqual(t, 30*time.Second)
			if code := c.stop(t, 30*time.Second); code != 0 {
				t.Fatalf("cdc run exited %d", code)
			}
			if _, twice := p.Applies(t); twice != 0 {
				t.Fatalf("%d row versions were written twice", twice)
			}
		})
	}
}

// chatConstraints are what a chat app puts on its users table.
const chatConstraints = `CREATE UNIQUE INDEX users_email_key ON users (email); CREATE UNIQUE INDEX users_phone_key ON users (lower(phone))`

// swaps makes, on the source, email and phone swaps through temporary
// values: within one transaction, a three-way rotation, a chain, and
// across transactions sent back to back (they share a batch).
func swaps(t *testing.T, p *pgtest.Pair, ids []string) {
	t.Helper()
	q := func(sql string, args ...any) { pgtest.Exec(t, p.Source, sql, args...) }
	// Emails of 0 and 1 swapped in one transaction.
	q(`DO $$ DECLARE a text; b text; BEGIN
SELECT email INTO a FROM users WHERE id = '` + ids[0] + `'; SELECT email INTO b FROM users WHERE id = '` + ids[1] + `';
UPDATE users SET email = 'tmp', updated_at = now() WHERE id = '` + ids[0] + `';
UPDATE users SET email = a, updated_at = now() WHERE id = '` + ids[1] + `';
UPDATE users SET email = b, updated_at = now() WHERE id = '` + ids[0] + `'; END $$`)
	// Phones of 2, 3, 4 rotated, with a change of case (the index is on lower(phone)).
	q(`DO $$ DECLARE p2 text; p3 text; p4 text; BEGIN
SELECT phone INTO p2 FROM users WHERE id = '` + ids[2] + `'; SELECT phone INTO p3 FROM users WHERE id = '` + ids[3] + `'; SELECT phone INTO p4 FROM users WHERE id = '` + ids[4] + `';
UPDATE users SET phone = 'tmp', updated_at = now() WHERE id = '` + ids[2] + `';
UPDATE users SET phone = upper(p2), updated_at = now() WHERE id = '` + ids[3] + `';
UPDATE users SET phone = p3, updated_at = now() WHERE id = '` + ids[4] + `';
UPDATE users SET phone = p4, updated_at = now() WHERE id = '` + ids[2] + `'; END $$`)
	// A chain: 6 takes a new email, 5 takes 6's old one, in that order.
	q(`DO $$ DECLARE e6 text; BEGIN SELECT email INTO e6 FROM users WHERE id = '` + ids[6] + `';
UPDATE users SET email = 'fresh-6@example.com', updated_at = now() WHERE id = '` + ids[6] + `';
UPDATE users SET email = e6, updated_at = now() WHERE id = '` + ids[5] + `'; END $$`)
	// A swap across three transactions that share a batch.
	var e7, e8 string
	if err := p.Source.QueryRow(context.Background(), "SELECT (SELECT email FROM users WHERE id = $1), (SELECT email FROM users WHERE id = $2)", ids[7], ids[8]).Scan(&e7, &e8); err != nil {
		t.Fatal(err)
	}
	q("UPDATE users SET email = 'tmp-x', updated_at = now() WHERE id = $1", ids[7])
	q("UPDATE users SET email = $2, updated_at = now() WHERE id = $1", ids[8], e7)
	q("UPDATE users SET email = $2, updated_at = now() WHERE id = $1", ids[7], e8)
	// Twenty more swaps, one transaction each.
	for i := 0; i < 20; i++ {
		a, b := ids[9+2*i], ids[10+2*i]
		q(`DO $$ DECLARE x text; y text; BEGIN SELECT email INTO x FROM users WHERE id = '` + a + `'; SELECT email INTO y FROM users WHERE id = '` + b + `';
UPDATE users SET email = NULL, updated_at = now() WHERE id = '` + a + `'; UPDATE users SET email = x, updated_at = now() WHERE id = '` + b + `';
UPDATE users SET email = y, updated_at = now() WHERE id = '` + a + `'; END $$`)
	}
}

func userIDs(t *testing.T, pool *pgxpool.Pool, n int) []string {
	t.Helper()
	rows, err := pool.Query(context.Background(), "SELECT id::text FROM users ORDER BY id LIMIT $1", n)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	return ids
}

func openDeadLetters(t *testing.T, p *pgtest.Pair) int {
	return count(t, p.Chat, "SELECT count(*) FROM sync_errors WHERE NOT resolved")
}

// TestOrder_SwapsUnderChatConstraints: chat has unique indexes the source's
// transactions satisfy only in their own order (swaps through temporary
// values). The stream converges with no dead letter; so do the reconciler
// (a swap made in chat by hand) and notify mode; a self-referencing foreign
// key in chat is satisfied; a real poison row is exactly one dead letter
// and the rest of its transaction commits.
func TestOrder_SwapsUnderChatConstraints(t *testing.T) {
	p := pgtest.NewPair(t, 200)
	pgtest.Exec(t, p.Source, "ALTER TABLE users ADD COLUMN referred_by uuid")
	pgtest.Exec(t, p.Chat, chatConstraints+`; ALTER TABLE users ADD COLUMN referred_by uuid REFERENCES users (id);
ALTER TABLE users ADD CONSTRAINT no_poison CHECK (first_name <> 'Poison')`)
	env := with(p.Env(), "BATCH_MAX_WAIT", "200ms", "SYNC_INTERVAL_MINUTES", "60", "FULL_RECONCILE_INTERVAL", "0", "LOG_LEVEL", "info",
		"SYNC_COLUMNS", "id,first_name,last_name,email,phone,role,status,profile_picture,created_at,updated_at,referred_by")
	if code, out := runCDC(t, env, "migrate"); code != 0 {
		t.Fatalf("migrate: exit %d\n%s", code, out)
	}
	c := startCDC(t, env, "run")
	p.WaitEqual(t, time.Minute)

	ids := userIDs(t, p.Source, 49)
	swaps(t, p, ids)
	// A referrer and the user it referred, inserted together (the referred
	// one first), then deleted together.
	pgtest.Exec(t, p.Source, `BEGIN;
INSERT INTO users (id, first_name, referred_by) VALUES ('00000000-0000-0000-0000-00000000000b', 'Referred', '00000000-0000-0000-0000-00000000000a');
INSERT INTO users (id, first_name) VALUES ('00000000-0000-0000-0000-00000000000a', 'Referrer'); COMMIT`)
	p.WaitEqual(t, time.Minute)
	pgtest.Exec(t, p.Source, "DELETE FROM users WHERE id IN ('00000000-0000-0000-0000-00000000000a', '00000000-0000-0000-0000-00000000000b')")
	p.WaitEqual(t, time.Minute)
	if n := openDeadLetters(t, p); n != 0 {
		t.Fatalf("%d dead letters for changes chat accepts in source order\n%s", n, c.out.String())
	}
	if !strings.Contains(c.out.String(), "applied a batch in source order") {
		t.Errorf("the swaps never needed the source order: the test does not test it")
	}

	// A poison row in a 50-row transaction: one dead letter, 49 rows in.
	pgtest.Exec(t, p.Source, `INSERT INTO users (first_name, email) SELECT CASE WHEN g = 25 THEN 'Poison' ELSE 'Batch' || g END, 'batch' || g || '@x' FROM generate_series(1, 50) g`)
	waitCount(t, p.Chat, "SELECT count(*) FROM users WHERE first_name LIKE 'Batch%'", 49, time.Minute)
	waitCount(t, p.Chat, "SELECT count(*) FROM sync_errors WHERE NOT resolved AND error_type = 'check_violation'", 1, 10*time.Second)
	if code := c.stop(t, 30*time.Second); code != 0 {
		t.Fatalf("cdc run exited %d", code)
	}
	pgtest.Exec(t, p.Chat, "UPDATE sync_errors SET resolved = true")
	pgtest.Exec(t, p.Source, "DELETE FROM users WHERE first_name = 'Poison'")

	// A swap and a rotation made in chat by hand: the reconciler puts the
	// source's values back, which trade places.
	pgtest.Exec(t, p.Chat, `DO $$ DECLARE a text; b text; c text; BEGIN
SELECT email INTO a FROM users WHERE id = '`+ids[0]+`'; SELECT email INTO b FROM users WHERE id = '`+ids[1]+`'; SELECT email INTO c FROM users WHERE id = '`+ids[2]+`';
UPDATE users SET email = NULL WHERE id IN ('`+ids[0]+`', '`+ids[1]+`', '`+ids[2]+`');
UPDATE users SET email = b WHERE id = '`+ids[0]+`'; UPDATE users SET email = c WHERE id = '`+ids[1]+`'; UPDATE users SET email = a WHERE id = '`+ids[2]+`'; END $$`)
	code, out := runCDC(t, env, "reconcile", "--full")
	if code != 0 || !strings.Contains(out, "3 stale") || !strings.Contains(out, "0 refused") {
		t.Fatalf("reconcile --full: exit %d\n%s", code, out)
	}
	if n := openDeadLetters(t, p); n != 0 {
		t.Fatalf("%d dead letters from repairing a rotation", n)
	}
	diff, err := p.Diff(context.Background())
	if err != nil || len(diff) > 0 {
		t.Fatalf("chat differs after the repair: %v %v", err, diff)
	}
}

// TestOrder_NotifyModeSwaps: in notify mode every batch is a repair of the
// notified ids; their swaps converge too.
func TestOrder_NotifyModeSwaps(t *testing.T) {
	p := pgtest.NewPair(t, 200)
	pgtest.Exec(t, p.Chat, chatConstraints)
	env := with(notifyEnv(p), "SYNC_INTERVAL_MINUTES", "60", "FULL_RECONCILE_INTERVAL", "0")
	migrateNotifyMode(t, env)
	c := startCDC(t, env, "run")
	p.WaitEqual(t, time.Minute)
	swaps(t, p, userIDs(t, p.Source, 49))
	p.WaitEqual(t, time.Minute)
	if n := openDeadLetters(t, p); n != 0 {
		t.Fatalf("%d dead letters in notify mode\n%s", n, c.out.String())
	}
}
