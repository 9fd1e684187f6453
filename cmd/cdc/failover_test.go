package main

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/myusta/cdc/internal/db"
	"github.com/myusta/cdc/internal/health"
	"github.com/myusta/cdc/internal/pglocal"
	"github.com/myusta/cdc/internal/pgtest"
)

// TestFailover promotes a streaming standby of the source under load,
// with cdc's SOURCE_DATABASE_URL listing both hosts and
// target_session_attrs=read-write, and checks that chat ends equal to the
// new primary row by row with no row version applied twice.
//
// From PostgreSQL 17, with the slot a failover slot, the standby syncing
// it (sync_replication_slots) and the primary's synchronized_standby_slots
// naming the standby's slot, cdc continues from the synced slot: no new
// slot, no copy. Before 17 (no slot on the standby) and without
// synchronized_standby_slots (the synced slot may be behind chat), cdc
// creates the slot again and copies the table, which compares every row.
func TestFailover(t *testing.T) {
	for _, tc := range []struct {
		major       int
		sync, guard bool // the standby syncs the slot; synchronized_standby_slots names the standby
		down        bool // cdc is stopped during the promotion and started after it
	}{{15, false, false, false}, {17, true, true, false}, {17, true, false, false}, {17, true, false, true}, {18, true, true, true}} {
		t.Run(fmt.Sprintf("%d sync=%t guard=%t down=%t", tc.major, tc.sync, tc.guard, tc.down), func(t *testing.T) {
			t.Parallel() // the slot sync worker's first copy takes some 25 s of waiting
			testFailover(t, tc.major, tc.sync, tc.guard, tc.down)
		})
	}
}

func testFailover(t *testing.T, major int, sync, guard, down bool) {
	keeps := sync && guard
	ctx := t.Context()
	bin := pgtest.BinFor(t, major)
	primarySettings := map[string]string{"wal_sender_timeout": "10s"}
	standbySettings := map[string]string{"hot_standby_feedback": "on"}
	if guard {
		primarySettings["synchronized_standby_slots"] = "standby_1"
	}
	if sync {
		standbySettings["sync_replication_slots"] = "on"
	}
	primary, err := pglocal.Start(ctx, pglocal.Options{Fast: true, Bin: bin, Settings: primarySettings})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = primary.Stop() })
	p := pgtest.NewSplitPair(t, primary, pgtest.ChatServer(t), 2000)
	p.TrackApplies(t)
	standby, err := pglocal.StartStandby(ctx, primary, "standby_1", pglocal.Options{Fast: true, Settings: standbySettings})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = standby.Stop() })

	u, err := url.Parse(p.SourceURL)
	if err != nil {
		t.Fatal(err)
	}
	u.Host = fmt.Sprintf("127.0.0.1:%d,127.0.0.1:%d", primary.Port(), standby.Port())
	u.RawQuery += "&target_session_attrs=read-write"
	env := with(p.Env(), "SOURCE_DATABASE_URL", u.String(), "LOG_LEVEL", "info", "BATCH_MAX_ROWS", "100")
	stopLoad := load(t, p, 300, 0)
	c := startCDC(t, env, "run")
	c.waitOutput(t, "streaming changes", 60*time.Second)
	if sync {
		waitSynced(t, standby, p.Slot)
	}
	time.Sleep(2 * time.Second) // changes flow through the slot, and its copy
	cost := "a promotion recreates the slot and copies the table"
	if keeps {
		cost = "a promotion continues from the synced slot (synchronized_standby_slots = standby_1)"
	}
	waitHealth(t, "http://"+httpAddr(t, c), 30*time.Second, "the slot check saying "+cost, func(st *health.Stats, _ int) bool {
		return st.Slot != nil && strings.HasPrefix(st.Slot.Promotion, cost) && strings.Contains(st.HealthStatus.Checks[health.CheckSlot].Message, cost)
	})
	before := len(c.out.String())
	if down {
		// The record of the source's timeline in chat, not this
		// process's memory, must tell the next start what happened.
		if code := c.stop(t, 40*time.Second); code != 0 {
			t.Fatalf("exit %d:\n%s", code, c.out.String())
		}
	}

	if err := primary.Halt(pglocal.KillStop); err != nil {
		t.Fatal(err)
	}
	stopLoad()
	if err := standby.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	p.Source.Close()
	newURL := standby.DSN(strings.TrimPrefix(u.Path, "/"))
	if p.Source, err = db.NewPool(ctx, newURL, 8); err != nil {
		t.Fatal(err)
	}
	if down {
		c, before = startCDC(t, env, "run"), 0
	}
	stopLoad = load(t, p, 300, 0)
	time.Sleep(2 * time.Second)
	stopLoad()
	p.WaitEqual(t, 90*time.Second)
	after := c.out.String()[before:]
	if code := c.stop(t, 40*time.Second); code != 0 {
		t.Fatalf("exit %d:\n%s", code, c.out.String())
	}

	if _, twice := p.Applies(t); twice != 0 && keeps {
		t.Errorf("%d row versions were applied twice across the promotion", twice)
	}
	created := strings.Contains(after, "created replication slot")
	switch {
	case keeps && (created || !strings.Contains(after, "continuing from its synced slot")):
		t.Errorf("cdc did not continue from the synced slot:\n%s", tail(after, 30))
	case !keeps && !created:
		t.Errorf("cdc did not create the slot again and copy:\n%s", tail(after, 30))
	case sync && !guard && !strings.Contains(after, "synchronized_standby_slots did not keep in step"):
		t.Errorf("cdc did not say why it does not trust the synced slot:\n%s", tail(after, 30))
	}
	t.Logf("PostgreSQL %d (cdc down during the promotion: %t): promoted; chat equals the new primary; slot created again: %t", major, down, created)
}

// waitSynced waits until the standby's copy of slot is synced and has
// confirmed some WAL.
func waitSynced(t *testing.T, standby *pglocal.Server, slot string) {
	t.Helper()
	pool, err := db.NewPool(t.Context(), standby.DSN("postgres"), 1)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	deadline := time.Now().Add(60 * time.Second)
	for {
		var synced bool
		err := pool.QueryRow(context.Background(), `SELECT synced AND confirmed_flush_lsn IS NOT NULL FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&synced)
		if err == nil && synced {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the standby did not sync slot %s within 60 s (err %v)", slot, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
