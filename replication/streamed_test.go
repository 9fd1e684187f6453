package replication_test

import (
	"context"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/myusta/cdc/internal/pgtest"
	"github.com/myusta/cdc/replication"
)

// count counts the rows where where holds on the source and in chat.
func count(t *testing.T, p *pgtest.Pair, where string) (src, chat int) {
	t.Helper()
	for _, side := range []struct {
		n    *int
		pool *pgxpool.Pool
	}{{&src, p.Source}, {&chat, p.Chat}} {
		if err := side.pool.QueryRow(context.Background(), "SELECT count(*) FROM users WHERE "+where).Scan(side.n); err != nil {
			t.Fatal(err)
		}
	}
	return src, chat
}

// TestStream_LargeTransactionsStreamedBeforeTheirCommit: with the
// source's logical_decoding_work_mem at its 64 kB minimum, a 20,000-row
// transaction is streamed to cdc while it runs (protocol 2) and never
// spilled by the walsender. cdc spools it (past 1 MB, to a file), shows
// none of it before the commit while other transactions go on flowing,
// applies it whole at the commit without what its rolled-back savepoints
// wrote, drops a streamed transaction that aborts, and streams one
// committed while cdc was stopped, too.
func TestStream_LargeTransactionsStreamedBeforeTheirCommit(t *testing.T) {
	ctx := context.Background()
	p := pgtest.NewPair(t, 20_000)
	p.StreamLarge(t)
	var logs pgtest.Buffer
	spoolDir := t.TempDir()
	tweak := func(o *replication.Options) {
		o.BatchMaxRows = 3000 // the replay fills several batches of one chat transaction
		o.SpoolDir = spoolDir
		o.Logger = slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	r := start(t, p, tweak)
	p.WaitEqual(t, 30*time.Second)

	conn, err := p.Source.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	exec := func(q string) {
		t.Helper()
		if _, err := conn.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	st := &r.stream.Stats
	updates, inserts := st.Updates.Load(), st.Inserts.Load()
	exec("BEGIN")
	exec("UPDATE users SET last_name = 'streamed', updated_at = now()")
	exec("SAVEPOINT a")
	exec("UPDATE users SET status = 'rolled back' WHERE email LIKE 'user1%'")
	exec("SAVEPOINT inner_a")
	exec("INSERT INTO users (first_name, updated_at) SELECT 'rolled back inner', now() FROM generate_series(1, 2000)")
	exec("ROLLBACK TO a")
	exec("SAVEPOINT b")
	exec("INSERT INTO users (first_name, updated_at) SELECT 'in savepoint', now() FROM generate_series(1, 2000)")
	exec("RELEASE b")
	p.WaitStreamed(t, 0)

	// Other transactions flow while the streamed one is open; chat shows
	// nothing of it yet.
	pgtest.Exec(t, p.Source, "INSERT INTO users (first_name, status, updated_at) VALUES ('small', 'small', now())")
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, chat := count(t, p, "status = 'small'"); chat == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a small transaction committed while a streamed one was open did not reach chat")
		}
	}
	if _, chat := count(t, p, "last_name = 'streamed'"); chat != 0 {
		t.Fatalf("chat shows %d rows of a transaction not yet committed", chat)
	}
	exec("COMMIT")
	p.WaitEqual(t, 60*time.Second)
	for where, want := range map[string]int{"last_name = 'streamed'": 20_000, "first_name = 'in savepoint'": 2000, "status = 'rolled back'": 0, "first_name = 'rolled back inner'": 0} {
		if src, chat := count(t, p, where); src != want || chat != want {
			t.Errorf("rows where %s: source %d, chat %d, want %d", where, src, chat, want)
		}
	}
	// Applied ahead, abandoned at the rolled-back savepoint, replayed at
	// the commit: each change counted once.
	if u, i := st.Updates.Load()-updates, st.Inserts.Load()-inserts; u != 20_000 || i != 2001 {
		t.Errorf("changes counted: %d updates, %d inserts; want 20000 and 2001", u, i)
	}
	if !strings.Contains(logs.String(), "applying a large source transaction") {
		t.Errorf("the streamed transaction was not spooled to a file:\n%s", logs.String())
	}

	// One that nothing interrupts is applied ahead of its commit, in a
	// chat transaction chat's readers do not see until the commit.
	logged := len(logs.String())
	streamed := p.ReadSlotStats(t).StreamTxns
	exec("BEGIN")
	exec("UPDATE users SET last_name = 'ahead', updated_at = now()")
	exec("SAVEPOINT c")
	exec("UPDATE users SET status = 'released savepoint' WHERE email LIKE 'user2%'")
	exec("RELEASE c")
	p.WaitStreamed(t, streamed)
	time.Sleep(500 * time.Millisecond) // batches written ahead meanwhile
	if _, chat := count(t, p, "last_name = 'ahead'"); chat != 0 {
		t.Fatalf("chat shows %d rows of a transaction applied ahead of its commit", chat)
	}
	exec("COMMIT")
	p.WaitEqual(t, 60*time.Second)
	since := logs.String()[logged:]
	if got := strings.Count(since, "applying a streamed transaction ahead"); got != 1 {
		t.Errorf("transactions applied ahead: %d, want 1:\n%s", got, since)
	}
	if strings.Contains(since, "no longer applying a streamed transaction ahead") {
		t.Errorf("the transaction applied ahead was abandoned:\n%s", since)
	}

	// A streamed transaction that aborts leaves nothing.
	streamed = p.ReadSlotStats(t).StreamTxns
	exec("BEGIN")
	exec("UPDATE users SET last_name = 'aborted', updated_at = now()")
	p.WaitStreamed(t, streamed)
	exec("ROLLBACK")
	pgtest.Exec(t, p.Source, "INSERT INTO users (first_name, status, updated_at) VALUES ('after abort', 'after abort', now())")
	p.WaitEqual(t, 30*time.Second)
	if _, chat := count(t, p, "last_name = 'aborted'"); chat != 0 {
		t.Fatalf("chat shows %d rows of an aborted streamed transaction", chat)
	}

	if st := p.ReadSlotStats(t); st.SpillTxns != 0 || st.SpillBytes != 0 {
		t.Errorf("the walsender spilled to disk: %+v", st)
	}

	// One committed while cdc was stopped streams when it starts again.
	// (The walsender streams only what lies past the slot's confirmed
	// position: it re-reads from the slot's restart_lsn and spills what
	// it re-reads before that: the slot's restart_lsn is moved past the
	// transactions above first.)
	p.MoveRestartLSN(t)
	p.WaitEqual(t, 30*time.Second)
	r.stop(t)
	streamed = p.ReadSlotStats(t).StreamTxns
	pgtest.Exec(t, p.Source, "UPDATE users SET last_name = 'while stopped', updated_at = now()")
	start(t, p, tweak)
	p.WaitEqual(t, 60*time.Second)
	p.WaitStreamed(t, streamed)
	if st := p.ReadSlotStats(t); st.SpillTxns != 0 || st.SpillBytes != 0 {
		t.Errorf("the walsender spilled to disk after the restart: %+v", st)
	}
	if left, _ := os.ReadDir(spoolDir); len(left) != 0 {
		t.Errorf("spool files left behind: %v", left)
	}
}
