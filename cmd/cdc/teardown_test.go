package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/myusta/cdc/internal/pgtest"
)

// TestTeardown removes the slot, publication and trigger only once the slot
// name is typed, refuses while cdc runs, and is safe to repeat.
func TestTeardown(t *testing.T) {
	ctx := context.Background()
	p := pgtest.NewPair(t, 100)
	env := p.Env()
	c := startCDC(t, env, "run")
	p.WaitEqual(t, 30*time.Second)
	count := func() (slots, pubs int) {
		t.Helper()
		err := p.Source.QueryRow(ctx, `SELECT (SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1), (SELECT count(*) FROM pg_publication WHERE pubname = 'cdc_users')`, p.Slot).Scan(&slots, &pubs)
		if err != nil {
			t.Fatal(err)
		}
		return
	}

	code, out := runCDC(t, env, "teardown", "--yes")
	if code != exitUsage || !strings.Contains(out, "a cdc instance is active on slot "+p.Slot+": cdc from") || !strings.Contains(out, "stop it first (or pass --force") {
		t.Fatalf("teardown while cdc runs: exit %d\n%s", code, out)
	}
	if slots, pubs := count(); slots != 1 || pubs != 1 {
		t.Fatalf("a refused teardown removed things: %d slots, %d publications left", slots, pubs)
	}
	if code := c.stop(t, 40*time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}

	code, out = runCDC(t, env, "teardown") // no input: not confirmed
	if code != exitFailure || !strings.Contains(out, "not confirmed: nothing removed") {
		t.Fatalf("teardown without confirmation: exit %d\n%s", code, out)
	}
	if slots, pubs := count(); slots != 1 || pubs != 1 {
		t.Fatalf("unconfirmed teardown removed things: %d slots, %d publications left", slots, pubs)
	}

	tp := startCDCInput(t, env, p.Slot+"\n", "teardown")
	if code := tp.wait(t, time.Minute); code != 0 || !strings.Contains(tp.out.String(), "dropped replication slot "+p.Slot) ||
		!strings.Contains(tp.out.String(), "dropped publication cdc_users") {
		t.Fatalf("confirmed teardown: exit %d\n%s", code, tp.out.String())
	}
	if slots, pubs := count(); slots != 0 || pubs != 0 {
		t.Fatalf("after teardown: %d slots, %d publications left", slots, pubs)
	}
	code, out = runCDC(t, env, "teardown", "--yes")
	if code != 0 || !strings.Contains(out, "nothing of cdc's was there") {
		t.Fatalf("second teardown: exit %d\n%s", code, out)
	}
}

// TestTeardown_ForceWhileActive: with --force, teardown ends the active
// instance's replication connection and removes everything.
func TestTeardown_ForceWhileActive(t *testing.T) {
	p := pgtest.NewPair(t, 100)
	env := with(p.Env(), "RETRY_INITIAL_DELAY", "50")
	c := startCDC(t, env, "run")
	p.WaitEqual(t, 30*time.Second)
	code, out := runCDC(t, env, "teardown", "--yes", "--force")
	if code != 0 || !strings.Contains(out, "removing its objects anyway (--force)") || !strings.Contains(out, "dropped replication slot "+p.Slot) ||
		!strings.Contains(out, "dropped publication cdc_users") {
		t.Fatalf("teardown --force: exit %d\n%s", code, out)
	}
	c.kill()
}
