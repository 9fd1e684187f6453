package main

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/myusta/cdc/internal/health"
	"github.com/myusta/cdc/internal/pgtest"
	"github.com/myusta/cdc/internal/tablediff"
	"github.com/myusta/cdc/migrations"
)

// driftRun is a running cdc whose source objects a test changes under it.
type driftRun struct {
	p    *pgtest.Pair
	c    *proc
	base string
	// src and chat are what the test compares: the source's names follow
	// the renames the test makes, chat's stay.
	src, chat tablediff.Side
}

// newDriftRun migrates and starts cdc with env, checking the watch every
// second, and waits for the first copy.
func newDriftRun(t *testing.T, p *pgtest.Pair, env map[string]string) *driftRun {
	t.Helper()
	env = with(env, "STANDBY_STATUS_INTERVAL", "1s")
	if code, out := runCDC(t, env, "migrate"); code != 0 {
		t.Fatalf("cdc migrate: exit %d\n%s", code, out)
	}
	c := startCDC(t, env, "run")
	d := &driftRun{p: p, c: c, base: "http://" + httpAddr(t, c)}
	d.src = tablediff.Side{Table: "public.users", Key: []string{"id"}, Columns: slices.Clone(pgtest.Columns)}
	d.chat = tablediff.Side{Table: "public.users", Key: []string{"id"}, Columns: slices.Clone(pgtest.Columns)}
	d.waitEqual(t)
	waitHealth(t, d.base, 30*time.Second, "HEALTHY and ready", healthyAndReady)
	return d
}

// waitEqual polls until chat equals the source over the compared columns.
func (d *driftRun) waitEqual(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		diff, err := tablediff.DiffSides(context.Background(), d.p.Source, d.p.Chat, d.src, d.chat, 10)
		if err == nil && len(diff) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("chat did not converge within 60s: err=%v diff=%v\n%s", err, diff, tail(d.c.out.String(), 30))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// drift runs change on the source, then writes (updates, deletes and
// inserts) while cdc's objects are changed; it waits for health to name
// the change (want) within 30 s and for chat to converge without a
// restart, and returns the log written meanwhile.
func (d *driftRun) drift(t *testing.T, change, table, want string) string {
	t.Helper()
	from := len(d.c.out.String())
	// The change and the first writes commit together, so the writes are
	// surely made while the change is in effect.
	ctx := context.Background()
	tx, err := d.p.Source.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	for _, sql := range []string{change,
		`UPDATE ` + table + ` SET last_name = 'drift ' || md5(random()::text), updated_at = now() WHERE hashtext(id::text) % 20 = 0`,
		`DELETE FROM ` + table + ` WHERE id IN (SELECT id FROM ` + table + ` ORDER BY random() LIMIT 5)`,
		`INSERT INTO ` + table + ` (first_name, last_name, email, created_at, updated_at)
SELECT 'new', 'drift', 'drift' || md5(random()::text) || '@example.com', now(), now() FROM generate_series(1, 5)`,
	} {
		if _, err := tx.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	pgtest.Exec(t, d.p.Source, `UPDATE `+table+` SET last_name = 'drift 2', updated_at = now() WHERE hashtext(id::text) % 20 = 2`)
	st := waitHealth(t, d.base, 30*time.Second, "the source_objects check naming "+want, func(st *health.Stats, _ int) bool {
		c := st.HealthStatus.Checks[health.CheckObjects]
		return c.Status != health.Pass && strings.Contains(c.Message, want) && st.HealthStatus.Status != health.Healthy
	})
	if st.Stream.SourceObjectsLastAt == nil || !strings.Contains(st.Stream.SourceObjectsLast, want) {
		t.Errorf("/stats stream: %+v, want the last drift recorded", st.Stream)
	}
	d.waitEqual(t)
	// Put right: ready again, the check only warns about what happened.
	waitHealth(t, d.base, 30*time.Second, "ready, the source_objects check a warning", func(st *health.Stats, ready int) bool {
		return ready == http.StatusOK && st.HealthStatus.Checks[health.CheckObjects].Status == health.Warn && st.Stream.SourceObjects == ""
	})
	// Writes after it flow by the stream again.
	pgtest.Exec(t, d.p.Source, `UPDATE `+table+` SET last_name = 'after', updated_at = now() WHERE hashtext(id::text) % 20 = 1`)
	d.waitEqual(t)
	log := d.c.out.String()[from:]
	if !strings.Contains(log, `"level":"ERROR","msg":"cdc's objects on the source changed: `) {
		t.Errorf("no ERROR line naming the change:\n%s", tail(log, 30))
	}
	return log
}

// tail is the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

func (d *driftRun) setColumn(side *tablediff.Side, from, to string) {
	i := slices.Index(side.Columns, from)
	if to == "" {
		side.Columns = slices.Delete(side.Columns, i, i+1)
		return
	}
	side.Columns[i] = to
}

// TestWatch_BackendMigrations changes cdc's objects and the table under a
// running cdc in replication mode, one after another, each with writes
// (updates, deletes, inserts) made while the change is in effect, and
// checks that health names each within 30 s and chat converges row by row
// without a restart: the table taken out of the publication, the
// publication dropped (and created again by cdc, which must then copy),
// a synced column renamed (followed), a synced column dropped with
// CASCADE (chat's column stays), the table renamed (followed).
func TestWatch_BackendMigrations(t *testing.T) {
	p := pgtest.NewPair(t, 1000)
	pub := p.Config(t).PublicationName
	d := newDriftRun(t, p, with(p.Env(), "SYNC_INTERVAL_MINUTES", "60", "LOG_LEVEL", "info"))

	d.drift(t, "ALTER PUBLICATION "+pub+" DROP TABLE users", "users", "was taken out of publication")
	log := d.drift(t, "DROP PUBLICATION "+pub, "users", "publication "+pub+" was dropped")
	if !strings.Contains(log, "restored cdc's objects on the source: created publication") {
		t.Errorf("the publication was not created again:\n%s", tail(log, 40))
	}
	// Up to 17 the walsender fails on a dropped publication and cdc
	// creates the slot again; 18 skips it with a WARNING, which cdc logs
	// with its detail and hint, and the stream goes on.
	if pgtest.Major(t, p.Source) >= 18 {
		if !strings.Contains(log, `"msg":"source on the replication connection: skipped loading publication`) || !strings.Contains(log, `"hint":"Create the publication`) {
			t.Errorf("the source's warning is not in the log with its hint:\n%s", tail(log, 40))
		}
	} else if !strings.Contains(log, "was dropped and created again") {
		t.Errorf("the slot was not created again:\n%s", tail(log, 40))
	}

	pgtest.Exec(t, p.Source, "UPDATE users SET status = 'before rename', updated_at = now() WHERE hashtext(id::text) % 7 = 0")
	d.waitEqual(t)
	d.setColumn(&d.src, "status", "state")
	log = d.drift(t, "ALTER TABLE users RENAME COLUMN status TO state", "users", "synced column status was renamed to state")
	if !strings.Contains(log, "following the change") || !strings.Contains(log, "state AS status") {
		t.Errorf("the rename was not followed with the mapping state AS status:\n%s", tail(log, 30))
	}
	pgtest.Exec(t, p.Source, "UPDATE users SET state = 'renamed', updated_at = now() WHERE hashtext(id::text) % 3 = 0")
	d.waitEqual(t)

	var before int
	if err := p.Chat.QueryRow(context.Background(), "SELECT count(*) FROM users WHERE profile_picture IS NOT NULL").Scan(&before); err != nil {
		t.Fatal(err)
	}
	d.setColumn(&d.src, "profile_picture", "")
	d.setColumn(&d.chat, "profile_picture", "")
	log = d.drift(t, "ALTER TABLE users DROP COLUMN profile_picture CASCADE", "users", "synced column profile_picture was dropped")
	if !strings.Contains(log, "chat's column profile_picture stays") {
		t.Errorf("no word that chat keeps its column:\n%s", tail(log, 30))
	}
	var after int
	if err := p.Chat.QueryRow(context.Background(), "SELECT count(*) FROM users WHERE profile_picture IS NOT NULL").Scan(&after); err != nil {
		t.Fatal(err)
	}
	if before == 0 || after < before-5 {
		t.Errorf("chat's profile_picture values: %d before the drop, %d after; want them kept", before, after)
	}

	d.src.Table = "public.members"
	d.drift(t, "ALTER TABLE users RENAME TO members", "members", "was renamed to public.members")

	if code := d.c.stop(t, 40*time.Second); code != 0 {
		t.Fatalf("exit %d\n%s", code, tail(d.c.out.String(), 30))
	}
}

// TestWatch_NotifyTrigger disables and then drops the notify trigger under
// a running cdc in notify mode: each time health names it, cdc puts the
// trigger back and repairs what it missed (deletes too), without a
// restart.
func TestWatch_NotifyTrigger(t *testing.T) {
	p := pgtest.NewPair(t, 1000)
	d := newDriftRun(t, p, notifyEnv(p))
	d.drift(t, "ALTER TABLE users DISABLE TRIGGER "+migrations.NotifyTrigger, "users", "the notify trigger "+migrations.NotifyTrigger)
	d.drift(t, "DROP TRIGGER "+migrations.NotifyTrigger+" ON users", "users", "is gone or disabled")
	if code := d.c.stop(t, 40*time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
}

// TestWatch_CannotRestore runs cdc as a source role that may not alter
// the publication: with the table taken out of it, cdc is UNHEALTHY and
// not ready, says what to run, and once the admin runs cdc migrate it
// repairs the gap by itself.
func TestWatch_CannotRestore(t *testing.T) {
	ctx := context.Background()
	srv := pgtest.Server(t)
	role := "cdc_watch_src"
	createRole(t, srv, role, "LOGIN REPLICATION NOSUPERUSER")
	p := pgtest.NewBarePair(t, srv, 1000)
	pub := p.Config(t).PublicationName
	adminEnv := with(p.Env(), "SOURCE_RUN_ROLE", role, "SYNC_INTERVAL_MINUTES", "60", "LOG_LEVEL", "info", "STANDBY_STATUS_INTERVAL", "1s")
	if code, out := runCDC(t, adminEnv, "migrate"); code != 0 {
		t.Fatalf("cdc migrate: exit %d\n%s", code, out)
	}
	env := with(adminEnv, "SOURCE_DATABASE_URL", strings.Replace(p.SourceURL, "postgres@", role+"@", 1))
	c := startCDC(t, env, "run")
	d := &driftRun{p: p, c: c, base: "http://" + httpAddr(t, c),
		src:  tablediff.Side{Table: "public.users", Key: []string{"id"}, Columns: pgtest.Columns},
		chat: tablediff.Side{Table: "public.users", Key: []string{"id"}, Columns: pgtest.Columns}}
	d.waitEqual(t)

	pgtest.Exec(t, p.Source, "ALTER PUBLICATION "+pub+" DROP TABLE users")
	pgtest.Exec(t, p.Source, "UPDATE users SET last_name = 'unpublished', updated_at = now() WHERE hashtext(id::text) % 10 = 0")
	pgtest.Exec(t, p.Source, "DELETE FROM users WHERE hashtext(id::text) % 97 = 0")
	st := waitHealth(t, d.base, 30*time.Second, "UNHEALTHY, not ready, naming the publication", func(st *health.Stats, ready int) bool {
		return st.HealthStatus.Status == health.Unhealthy && ready == http.StatusServiceUnavailable &&
			strings.Contains(st.Stream.SourceObjects, "was taken out of publication")
	})
	if !strings.Contains(st.Stream.SourceObjects, "may not") {
		t.Errorf("source objects %q: want it to say cdc's role may not restore it", st.Stream.SourceObjects)
	}
	c.waitOutput(t, "run cdc migrate as a role that owns the table", 10*time.Second)
	time.Sleep(2 * time.Second)
	if diff, _ := tablediff.DiffSides(ctx, p.Source, p.Chat, d.src, d.chat, 1); len(diff) == 0 {
		t.Fatal("chat already equals the source: the test did not make a gap")
	}

	if code, out := runCDC(t, adminEnv, "migrate"); code != 0 || !strings.Contains(out, "publication") {
		t.Fatalf("cdc migrate: exit %d\n%s", code, out)
	}
	d.waitEqual(t)
	waitHealth(t, d.base, 30*time.Second, "ready again", func(st *health.Stats, ready int) bool {
		return ready == http.StatusOK && st.Stream.SourceObjects == ""
	})
	if code := c.stop(t, 40*time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
}
