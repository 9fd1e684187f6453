package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/myusta/cdc/internal/pglocal"
	"github.com/myusta/cdc/internal/pgtest"
)

// notifyEnv configures notify mode with the scheduled reconciler out of the
// way (one run an hour), so that convergence in these tests is the work of
// the listener and of the catch-up on reconnect alone.
func notifyEnv(p *pgtest.Pair) map[string]string {
	return with(p.Env(), "SYNC_MODE", "notify", "SYNC_INTERVAL_MINUTES", "60", "LOG_LEVEL", "info")
}

// migrateNotifyMode runs `cdc migrate` in notify mode and checks what it did.
func migrateNotifyMode(t *testing.T, env map[string]string) string {
	t.Helper()
	code, out := runCDC(t, env, "migrate")
	if code != 0 || !strings.Contains(out, "user_changes_trigger") {
		t.Fatalf("cdc migrate (notify): exit %d\n%s", code, out)
	}
	return out
}

// slotExists reports whether the pair's replication slot exists.
func slotExists(t *testing.T, p *pgtest.Pair) bool {
	t.Helper()
	var n int
	if err := p.Source.QueryRow(context.Background(), "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", p.Slot).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n > 0
}

// terminateListener ends the listener's backend on the source and reports
// whether there was one.
func terminateListener(t *testing.T, p *pgtest.Pair) bool {
	t.Helper()
	var n int
	err := p.Source.QueryRow(context.Background(), `SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid() AND query ILIKE 'listen %'`).Scan(&n)
	if err != nil {
		t.Fatal(err)
	}
	return n > 0
}

// TestNotify_ConvergesWhileTheListenerIsKilled runs notify mode under a
// mixed workload (single-row changes and 250-row transactions) and kills
// the listener's connection with pg_terminate_backend five times. The
// notifications sent while it reconnects are lost; the catch-up on
// reconnect must make up for them (the scheduled reconciler is set to an
// hour, so it cannot). Chat must end equal to the source, row by row, and
// no replication slot may exist.
func TestNotify_ConvergesWhileTheListenerIsKilled(t *testing.T) {
	p := pgtest.NewPair(t, 5000)
	env := notifyEnv(p)
	migrateNotifyMode(t, env)
	c := startCDC(t, env, "run")
	p.WaitEqual(t, 30*time.Second) // the first connect's full compare copies what is missing
	c.waitOutput(t, "sync mode: notify", time.Second)

	stopLoad := load(t, p, 300, 250)
	const kills = 5
	for i := 0; i < kills; i++ {
		time.Sleep(time.Second)
		deadline := time.Now().Add(10 * time.Second)
		for !terminateListener(t, p) {
			if time.Now().After(deadline) {
				t.Fatalf("no listener connection to terminate (kill %d)", i+1)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	time.Sleep(time.Second)
	stopLoad()
	p.WaitEqual(t, 60*time.Second)
	out := c.out.String()
	if n := strings.Count(out, "notify listener reconnected"); n < kills {
		t.Errorf("%d reconnects logged, want %d", n, kills)
	}
	if slotExists(t, p) {
		t.Error("notify mode created a replication slot")
	}
	if code := c.stop(t, 40*time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
	if !strings.Contains(c.out.String(), `"catch_ups":`) {
		t.Errorf("no final stats:\n%s", c.out.String())
	}
}

// TestNotify_WorksWithoutLogicalReplicationAndSurvivesSourceRestart is
// notify mode's reason to exist: a source with wal_level=replica, where
// replication mode refuses to start. The source server is restarted under
// load; cdc reconnects and catches up.
func TestNotify_WorksWithoutLogicalReplicationAndSurvivesSourceRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	srcSrv, err := pglocal.Start(ctx, pglocal.Options{Fast: true, Settings: map[string]string{"wal_level": "replica"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srcSrv.Stop() })
	p := pgtest.NewBarePair(t, srcSrv, 2000)
	// Chat lives on the shared server, so only the source goes down.
	chat := pgtest.NewBarePair(t, pgtest.Server(t), 0)
	p.ChatURL, p.Chat = chat.ChatURL, chat.Chat
	env := notifyEnv(p)
	migrateNotifyMode(t, env)
	c := startCDC(t, env, "run")
	p.WaitEqual(t, 30*time.Second)
	if !strings.Contains(c.out.String(), "first copy done") {
		t.Errorf("an empty chat table did not get the bulk copy:\n%s", c.out.String())
	}

	stopLoad := load(t, p, 200, 100)
	time.Sleep(2 * time.Second)
	if err := srcSrv.Halt(pglocal.FastStop); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	if err := srcSrv.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	p.Source.Reset()
	time.Sleep(3 * time.Second)
	stopLoad()
	p.WaitEqual(t, 60*time.Second)
	if !c.running() {
		t.Fatalf("cdc exited during the source restart:\n%s", c.out.String())
	}
	c.waitOutput(t, "notify listener reconnected", time.Second)
	if code := c.stop(t, 40*time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

// TestNotify_SwitchingModesLosesNothing goes replication → notify →
// replication, each phase under a workload, with changes (inserts, updates,
// deletes) made while no cdc runs at each switch. After each phase chat
// equals the source; `cdc migrate` leaves only the current mode's objects
// on the source.
func TestNotify_SwitchingModesLosesNothing(t *testing.T) {
	p := pgtest.NewPair(t, 3000)
	repl := with(p.Env(), "LOG_LEVEL", "info")
	notify := notifyEnv(p)

	phase := func(name string, env map[string]string) {
		t.Helper()
		c := startCDC(t, env, "run")
		stopLoad := load(t, p, 200, 50)
		time.Sleep(3 * time.Second)
		stopLoad()
		p.WaitEqual(t, 60*time.Second)
		if code := c.stop(t, 40*time.Second); code != 0 {
			t.Fatalf("%s: exit %d", name, code)
		}
		// Changes while no cdc runs.
		pgtest.Exec(t, p.Source, `UPDATE users SET status = 'between', updated_at = now() WHERE id IN (SELECT id FROM users ORDER BY random() LIMIT 50)`)
		pgtest.Exec(t, p.Source, `DELETE FROM users WHERE id IN (SELECT id FROM users ORDER BY random() LIMIT 20)`)
		pgtest.Exec(t, p.Source, `INSERT INTO users (first_name, email, updated_at) SELECT 'between', 'between-'||g||'-'||$1||'@example.com', now() FROM generate_series(1, 30) g`, name)
	}

	phase("replication", repl)
	out := migrateNotifyMode(t, notify)
	if !strings.Contains(out, "dropped replication slot") || slotExists(t, p) {
		t.Fatalf("migrate to notify left the slot:\n%s", out)
	}
	phase("notify", notify)

	code, out := runCDC(t, repl, "migrate")
	if code != 0 || !strings.Contains(out, "dropped trigger user_changes_trigger") {
		t.Fatalf("migrate back to replication: exit %d\n%s", code, out)
	}
	var triggers int
	if err := p.Source.QueryRow(context.Background(), "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'users'::regclass AND NOT tgisinternal").Scan(&triggers); err != nil {
		t.Fatal(err)
	}
	if triggers != 0 {
		t.Fatalf("%d triggers left on users after migrating back to replication mode", triggers)
	}
	phase("replication again", repl)
	c := startCDC(t, repl, "run")
	p.WaitEqual(t, 60*time.Second)
	if code := c.stop(t, 40*time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
}
