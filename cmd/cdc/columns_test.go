package main

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/myusta/cdc/internal/pgtest"
	"github.com/myusta/cdc/internal/tablediff"
)

// without is the default SYNC_COLUMNS without col.
func without(col string) string {
	return strings.Join(slices.DeleteFunc(slices.Clone(pgtest.Columns), func(c string) bool { return c == col }), ",")
}

// TestColumns_SyncColumnsChangedByMigrate changes SYNC_COLUMNS with cdc
// migrate under a running cdc on a 100,000-row table: a column added is
// created on chat and backfilled for every existing row (column only,
// while changes stream) without a restart; a column removed stops being
// synced and keeps chat's values; the backend's type change of that
// column, which PostgreSQL refuses while it is published, goes through
// once it is out of SYNC_COLUMNS; added back with cdc not running, the
// next cdc run backfills it.
func TestColumns_SyncColumnsChangedByMigrate(t *testing.T) {
	const rows = 100_000
	ctx := context.Background()
	p := pgtest.NewBarePair(t, pgtest.Server(t), rows)
	env := with(p.Env(), "SYNC_COLUMNS", without("phone"), "STANDBY_STATUS_INTERVAL", "1s", "SYNC_INTERVAL_MINUTES", "60", "LOG_LEVEL", "info")
	if code, out := runCDC(t, env, "migrate"); code != 0 {
		t.Fatalf("cdc migrate: exit %d\n%s", code, out)
	}
	c := startCDC(t, env, "run")
	d := &driftRun{p: p, c: c, base: "http://" + httpAddr(t, c),
		src:  tablediff.Side{Table: "public.users", Key: []string{"id"}, Columns: strings.Split(without("phone"), ",")},
		chat: tablediff.Side{Table: "public.users", Key: []string{"id"}, Columns: strings.Split(without("phone"), ",")}}
	d.waitEqual(t)

	// Add phone: cdc migrate adds the chat column, the running cdc follows
	// and fills it, while the source keeps changing.
	full := with(env, "SYNC_COLUMNS", strings.Join(pgtest.Columns, ","))
	code, out := runCDC(t, full, "migrate")
	if code != 0 || !strings.Contains(out, "added column phone text to public.users") || !strings.Contains(out, "column phone is synced now") {
		t.Fatalf("cdc migrate adding phone: exit %d\n%s", code, out)
	}
	stop := load(t, p, 100, 20)
	c.waitOutput(t, "cdc migrate changed the synced columns (added phone)", 15*time.Second)
	c.waitOutput(t, `"msg":"backfilled columns phone","rows":`, 60*time.Second)
	stop()
	for _, line := range strings.Split(c.out.String(), "\n") {
		if strings.Contains(line, "backfill") {
			t.Log(line)
		}
	}
	pgtest.Exec(t, p.Source, "UPDATE users SET phone = 'after backfill', updated_at = now() WHERE hashtext(id::text) % 50 = 0")
	d.src.Columns, d.chat.Columns = slices.Clone(pgtest.Columns), slices.Clone(pgtest.Columns)
	d.waitEqual(t)

	// The type of a published column cannot change; take it out first.
	_, err := p.Source.Exec(ctx, "ALTER TABLE users ALTER COLUMN phone TYPE varchar(40)")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "0A000" {
		t.Fatalf("ALTER TYPE of a published column: %v, want PostgreSQL's refusal (0A000)", err)
	}
	if code, out := runCDC(t, env, "migrate"); code != 0 || !strings.Contains(out, "column phone is no longer synced") {
		t.Fatalf("cdc migrate removing phone: exit %d\n%s", code, out)
	}
	c.waitOutput(t, "cdc migrate changed the synced columns (removed phone", 15*time.Second)
	d.src.Columns, d.chat.Columns = strings.Split(without("phone"), ","), strings.Split(without("phone"), ",")
	pgtest.Exec(t, p.Source, "ALTER TABLE users ALTER COLUMN phone TYPE varchar(40)")
	pgtest.Exec(t, p.Source, "UPDATE users SET phone = 'not synced', last_name = 'synced', updated_at = now() WHERE hashtext(id::text) % 50 = 1")
	d.waitEqual(t)
	var leaked int
	if err := p.Chat.QueryRow(ctx, "SELECT count(*) FROM users WHERE phone = 'not synced'").Scan(&leaked); err != nil || leaked != 0 {
		t.Fatalf("chat rows with the unsynced phone value: %d (%v), want 0", leaked, err)
	}
	if code := c.stop(t, 40*time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}

	// Put back while cdc is stopped: the next start fills it.
	if code, out := runCDC(t, full, "migrate"); code != 0 || !strings.Contains(out, "column phone is synced now") {
		t.Fatalf("cdc migrate adding phone back: exit %d\n%s", code, out)
	}
	c = startCDC(t, full, "run")
	d.c = c
	c.waitOutput(t, `"msg":"backfilled columns phone","rows":`, 60*time.Second)
	d.src.Columns, d.chat.Columns = slices.Clone(pgtest.Columns), slices.Clone(pgtest.Columns)
	d.waitEqual(t)
	if code := c.stop(t, 40*time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
}
