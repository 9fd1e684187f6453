package main

import (
	"context"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/myusta/cdc/internal/db"
	"github.com/myusta/cdc/internal/demo"
	"github.com/myusta/cdc/internal/pglocal"
	"github.com/myusta/cdc/internal/pgtest"
)

// load runs a steady mixed workload on the source: single-row inserts,
// updates and deletes at rate/s, plus, when bulk > 0, a transaction
// updating bulk rows every 150 ms. stop ends it and waits.
func load(t *testing.T, p *pgtest.Pair, rate, bulk int) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w, err := demo.NewWorkload(ctx, p.Source, 42)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		w.Run(ctx, rate, slog.New(slog.NewTextHandler(io.Discard, nil)))
	}()
	if bulk > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				_, _ = p.Source.Exec(ctx, `UPDATE users SET status = 'bulk', updated_at = clock_timestamp()
WHERE id IN (SELECT id FROM users ORDER BY random() LIMIT $1)`, bulk)
				time.Sleep(150 * time.Millisecond)
			}
		}()
	}
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); wg.Wait() }) }
	t.Cleanup(stop)
	return stop
}

func lsnOf(t *testing.T, p *pgtest.Pair, query string, args ...any) pglogrepl.LSN {
	t.Helper()
	var s string
	if err := p.Source.QueryRow(context.Background(), query, args...).Scan(&s); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	lsn, err := pglogrepl.ParseLSN(s)
	if err != nil {
		t.Fatal(err)
	}
	return lsn
}

// TestRun_SurvivesKillNine kills cdc with SIGKILL at random moments during
// a steady mixed workload (with transactions larger than a batch, which the
// source streams before their commit), restarts it each time, and checks
// that chat ends equal to the source row by row, that no row version was
// applied twice, and that the slot moved on.
func TestRun_SurvivesKillNine(t *testing.T) {
	p := pgtest.NewPair(t, 5000)
	p.TrackApplies(t)
	p.StreamLarge(t)
	env := with(p.Env(), "BATCH_MAX_ROWS", "100", "LOG_LEVEL", "info")
	before := lsnOf(t, p, "SELECT pg_current_wal_lsn()::text")
	stopLoad := load(t, p, 300, 250)

	rng := rand.New(rand.NewPCG(7, 7))
	const kills = 12
	resumed := 0 // restarts that resumed inside a transaction split across batches
	for i := 0; i < kills; i++ {
		c := startCDC(t, env, "run")
		time.Sleep(time.Duration(300+rng.IntN(1700)) * time.Millisecond)
		if !c.running() {
			t.Fatalf("cdc exited on its own (code %d):\n%s", c.code, c.out.String())
		}
		c.kill()
		resumed += strings.Count(c.out.String(), "resuming a transaction applied in part")
		if strings.Contains(c.out.String(), "panic") {
			t.Fatalf("cdc panicked:\n%s", c.out.String())
		}
	}
	stopLoad()

	c := startCDC(t, env, "run")
	p.WaitEqual(t, 90*time.Second)
	if code := c.stop(t, 40*time.Second); code != 0 {
		t.Fatalf("cdc exit code after SIGTERM: %d\n%s", code, c.out.String())
	}
	total, twice := p.Applies(t)
	if twice != 0 {
		t.Fatalf("%d row versions were applied twice after %d kill -9", twice, kills)
	}
	confirmed := lsnOf(t, p, "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", p.Slot)
	if confirmed <= before {
		t.Fatalf("slot confirmed_flush_lsn %s did not advance past %s", confirmed, before)
	}
	streamed := p.ReadSlotStats(t).StreamTxns
	if streamed == 0 {
		t.Fatal("the source streamed no transaction: the test did not exercise streamed transactions")
	}
	t.Logf("%d kill -9 survived (%d resumed inside a split transaction, %d transactions streamed): %d row versions applied, none twice; slot confirmed %s",
		kills, resumed, streamed, total, confirmed)
}

// TestRun_CrashDuringFirstCopy kills cdc while the first copy runs: no
// checkpoint is stored (each part's rows commit on their own, so a part
// that had finished may remain), and the next start drops the half-made
// slot and copies again, merging into what is there. (Sink tests cover a
// failed part and the merge deterministically.)
func TestRun_CrashDuringFirstCopy(t *testing.T) {
	p := pgtest.NewPair(t, 300_000)
	env := p.Env()
	c := startCDC(t, env, "run")
	deadline := time.Now().Add(60 * time.Second)
	for {
		var copying bool
		if err := p.Source.QueryRow(context.Background(), "SELECT EXISTS (SELECT 1 FROM pg_stat_progress_copy WHERE command = 'COPY TO')").Scan(&copying); err != nil {
			t.Fatal(err)
		}
		if copying {
			break
		}
		if time.Now().After(deadline) || !c.running() {
			t.Fatalf("the first copy was never seen running:\n%s", c.out.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	c.kill()
	var rows, checkpoints int
	if err := p.Chat.QueryRow(context.Background(), "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM cdc_checkpoint)").Scan(&rows, &checkpoints); err != nil {
		t.Fatal(err)
	}
	if checkpoints != 0 {
		t.Fatalf("after a crash mid-copy chat holds %d rows and %d checkpoints; want no checkpoint", rows, checkpoints)
	}
	t.Logf("after the crash chat holds %d rows (parts that had committed)", rows)

	c = startCDC(t, env, "run")
	p.WaitEqual(t, 120*time.Second)
	if !strings.Contains(c.out.String(), "first copy did not finish") {
		t.Errorf("restart did not say it redid the copy:\n%s", c.out.String())
	}
	if code := c.stop(t, 40*time.Second); code != 0 {
		t.Fatalf("exit code %d", code)
	}
}

// TestRun_SlotHeldByAnotherProcessIsRetried: a slot held by another
// process (not a cdc: pg_recvlogical-like, here a bare walsender session) is
// retried with backoff and an explanation instead of ending cdc, which
// takes the slot once it is free.
func TestRun_SlotHeldByAnotherProcessIsRetried(t *testing.T) {
	ctx := context.Background()
	p := pgtest.NewPair(t, 100)
	env := p.Env()
	a := startCDC(t, env, "run")
	p.WaitEqual(t, 30*time.Second)
	if code := a.stop(t, 40*time.Second); code != 0 {
		t.Fatalf("first cdc exit code %d", code)
	}
	// Another consumer reads the slot.
	holder, err := db.ConnectReplication(ctx, p.SourceURL)
	if err != nil {
		t.Fatal(err)
	}
	if err := pglogrepl.StartReplication(ctx, holder, p.Slot, 0, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", "publication_names 'cdc_users'"}}); err != nil {
		t.Fatal(err)
	}
	b := startCDC(t, env, "run")
	b.waitOutput(t, "55006", 20*time.Second) // "replication slot … is active for PID …"
	b.waitOutput(t, "another consumer holds slot", time.Second)
	if !b.running() {
		t.Fatalf("cdc exited instead of waiting for the slot:\n%s", b.out.String())
	}
	_ = holder.Close(ctx)
	pgtest.Exec(t, p.Source, `INSERT INTO users (first_name, updated_at) VALUES ('after takeover', now())`)
	p.WaitEqual(t, 30*time.Second)
	if code := b.stop(t, 40*time.Second); code != 0 {
		t.Fatalf("second cdc exit code %d", code)
	}
	if !strings.Contains(b.out.String(), `"msg":"cdc stopped"`) {
		t.Errorf("no final stats line on SIGTERM:\n%s", b.out.String())
	}
}

// TestRun_SurvivesDatabaseOutage stops the PostgreSQL server holding both
// databases while cdc runs: cdc keeps probing (loudly once past
// MAX_RECONNECT_ATTEMPTS) instead of exiting, and catches up when the
// server is back.
func TestRun_SurvivesDatabaseOutage(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv, err := pglocal.Start(ctx, pglocal.Options{Fast: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Stop() })
	p := pgtest.NewPairOn(t, srv, 1000)
	env := with(p.Env(), "MAX_RECONNECT_ATTEMPTS", "2", "RETRY_MAX_DELAY", "300")
	c := startCDC(t, env, "run")
	p.WaitEqual(t, 30*time.Second)

	if err := srv.Halt(pglocal.FastStop); err != nil {
		t.Fatal(err)
	}
	c.waitOutput(t, "probing periodically", 20*time.Second)
	if !c.running() {
		t.Fatalf("cdc exited during the outage:\n%s", c.out.String())
	}
	if err := srv.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	p.Source.Reset() // the test's own pooled connections died with the server
	p.Chat.Reset()
	pgtest.Exec(t, p.Source, `UPDATE users SET status = 'after outage', updated_at = now() WHERE email LIKE 'user1%'`)
	pgtest.Exec(t, p.Source, `DELETE FROM users WHERE email LIKE 'user2%'`)
	p.WaitEqual(t, 30*time.Second)
	if code := c.stop(t, 40*time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

// TestDev_RunsTheEmbeddedDefault runs `cdc dev` as a newcomer would, with a
// small load, and stops it with Ctrl-C.
func TestDev_RunsTheEmbeddedDefault(t *testing.T) {
	dir, err := os.MkdirTemp("", "cdc-dev-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	c := startCDC(t, map[string]string{"LOG_FORMAT": "json", "HTTP_ADDR": "127.0.0.1:0"}, "dev", "--dir", filepath.Join(dir, "pg"), "--users", "500", "--load", "100")
	c.waitOutput(t, "streaming changes", 60*time.Second)
	time.Sleep(2 * time.Second)
	_ = c.cmd.Process.Signal(os.Interrupt)
	if code := c.wait(t, 60*time.Second); code != 0 {
		t.Fatalf("cdc dev exit %d:\n%s", code, c.out.String())
	}
	out := c.out.String()
	for _, w := range []string{"seeding 500 demo users", `"msg":"first copy done"`, `"msg":"cdc stopped"`} {
		if !strings.Contains(out, w) {
			t.Errorf("cdc dev output lacks %q:\n%s", w, out)
		}
	}
	if strings.Contains(out, `"updates":0,`) {
		t.Errorf("no updates were synced under --load:\n%s", out)
	}
	exports := regexp.MustCompile(`export SOURCE_DATABASE_URL='[^']+' CHAT_DATABASE_URL='[^']+'`).FindString(out)
	if exports == "" {
		t.Errorf("cdc dev prints no export line for the other commands:\n%s", out)
	}
	// The data directory is reused: a second start finds the data, on the
	// same port, so the printed psql and export lines keep working.
	c = startCDC(t, map[string]string{"LOG_FORMAT": "json", "HTTP_ADDR": "127.0.0.1:0"}, "dev", "--dir", filepath.Join(dir, "pg"), "--users", "500")
	c.waitOutput(t, "streaming changes", 60*time.Second)
	_ = c.cmd.Process.Signal(os.Interrupt)
	if code := c.wait(t, 60*time.Second); code != 0 || strings.Contains(c.out.String(), "seeding") {
		t.Fatalf("second cdc dev: exit %d, output:\n%s", code, c.out.String())
	}
	if !strings.Contains(c.out.String(), exports) {
		t.Errorf("second cdc dev moved: want %q again:\n%s", exports, c.out.String())
	}
}
