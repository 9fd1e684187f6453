package main

import (
	"context"
	"testing"
	"time"

	"github.com/myusta/cdc/internal/pglocal"
	"github.com/myusta/cdc/internal/pgtest"
)

// TestSlot_RetainedWALWarnsAndRecovers blocks cdc's chat writes (a lock
// held on the chat table) while the source writes several MB of WAL: the
// slot watcher warns past SLOT_WAL_WARN_MB, and says so when the slot is
// healthy again after cdc catches up.
func TestSlot_RetainedWALWarnsAndRecovers(t *testing.T) {
	ctx := context.Background()
	p := pgtest.NewPair(t, 5000)
	env := with(p.Env(), "SLOT_WAL_WARN_MB", "1", "STANDBY_STATUS_INTERVAL", "500ms", "LOG_LEVEL", "info")
	c := startCDC(t, env, "run")
	p.WaitEqual(t, 30*time.Second)

	tx, err := p.Chat.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, "LOCK TABLE users IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 4; i++ {
		pgtest.Exec(t, p.Source, "UPDATE users SET status = 'wal '||$1::int, updated_at = now()", i)
	}
	c.waitOutput(t, "replication slot holds much WAL on the source", 20*time.Second)
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	p.WaitEqual(t, 60*time.Second)
	// restart_lsn moves once decoding passes a running-xacts record, which
	// the server logs every 15 s: allow for a few.
	c.waitOutput(t, "replication slot healthy again", 60*time.Second)
	if code := c.stop(t, 40*time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

// TestSlot_LostSlotIsRecreatedAndChatRepaired: while cdc is stopped the
// source changes rows and max_slot_wal_keep_size makes the server
// invalidate the slot (wal_status = lost). The next start says so at ERROR,
// recreates the slot and copies the table again, merging into chat, which
// ends equal to the source — including the changes the lost WAL held.
func TestSlot_LostSlotIsRecreatedAndChatRepaired(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	srv, err := pglocal.Start(ctx, pglocal.Options{Fast: true, Settings: map[string]string{"max_slot_wal_keep_size": "1MB"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Stop() })
	p := pgtest.NewPairOn(t, srv, 3000)
	env := with(p.Env(), "LOG_LEVEL", "info")
	c := startCDC(t, env, "run")
	p.WaitEqual(t, 30*time.Second)
	if code := c.stop(t, 40*time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}

	pgtest.Exec(t, p.Source, `DELETE FROM users WHERE id IN (SELECT id FROM users ORDER BY id LIMIT 100)`)
	pgtest.Exec(t, p.Source, `INSERT INTO users (first_name, updated_at) SELECT 'while lost', now() FROM generate_series(1, 100)`)
	deadline := time.Now().Add(60 * time.Second)
	for {
		pgtest.Exec(t, p.Source, "UPDATE users SET status = md5(random()::text), updated_at = now() WHERE first_name <> 'while lost'")
		pgtest.Exec(t, p.Source, "SELECT pg_switch_wal()")
		pgtest.Exec(t, p.Source, "CHECKPOINT")
		var status string
		if err := p.Source.QueryRow(ctx, "SELECT COALESCE(wal_status, '') FROM pg_replication_slots WHERE slot_name = $1", p.Slot).Scan(&status); err != nil {
			t.Fatal(err)
		}
		if status == "lost" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("slot not invalidated (wal_status %q)", status)
		}
	}

	c = startCDC(t, env, "run")
	p.WaitEqual(t, 60*time.Second)
	c.waitOutput(t, "replication slot was invalidated (wal_status=lost)", time.Second)
	c.waitOutput(t, "first copy done", time.Second)
	if code := c.stop(t, 40*time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
}
