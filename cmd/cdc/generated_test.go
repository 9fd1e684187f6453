package main

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/myusta/cdc/internal/pglocal"
	"github.com/myusta/cdc/internal/pgtest"
	"github.com/myusta/cdc/internal/tablediff"
)

// fullNameSQL is the generated column the tests add to a users table.
const fullNameSQL = "ALTER TABLE users ADD COLUMN full_name text GENERATED ALWAYS AS (first_name || ' ' || last_name) STORED"

// withFullName is the default SYNC_COLUMNS plus full_name.
var withFullName = strings.Join(append(slices.Clone(pgtest.Columns), "full_name"), ",")

// fullNameSide is the users table compared over the default columns and
// full_name.
func fullNameSide() tablediff.Side {
	return tablediff.Side{Table: "public.users", Key: []string{"id"}, Columns: append(slices.Clone(pgtest.Columns), "full_name")}
}

// changeNames inserts, updates and deletes rows so that full_name changes.
func changeNames(t *testing.T, p *pgtest.Pair) {
	t.Helper()
	pgtest.Exec(t, p.Source, "INSERT INTO users (first_name, last_name, email) VALUES ('Ada', 'Lovelace', 'ada@example.com'), ('Alan', NULL, 'alan@example.com')")
	pgtest.Exec(t, p.Source, "UPDATE users SET first_name = 'Grace', last_name = 'Hopper', updated_at = now() WHERE email = 'ada@example.com'")
	pgtest.Exec(t, p.Source, "UPDATE users SET last_name = last_name || '-x', updated_at = now() WHERE email LIKE 'user%' AND hashtext(id::text) % 10 = 0")
	pgtest.Exec(t, p.Source, "DELETE FROM users WHERE email LIKE 'user%' AND hashtext(id::text) % 10 = 1")
}

// chatFullName is chat's full_name of the row with email.
func chatFullName(t *testing.T, p *pgtest.Pair, email string) *string {
	t.Helper()
	var s *string
	if err := p.Chat.QueryRow(context.Background(), "SELECT full_name FROM users WHERE email = $1", email).Scan(&s); err != nil {
		t.Fatalf("chat full_name of %s: %v", email, err)
	}
	return s
}

// TestGenerated_RefusedBefore18 names a stored generated source column in
// SYNC_COLUMNS on a source older than PostgreSQL 18, which cannot publish
// it: cdc migrate and cdc run stop with exit 2 and say to leave it out and
// let chat compute it, instead of the server's "cannot use generated column
// in publication column list" (42P10).
func TestGenerated_RefusedBefore18(t *testing.T) {
	p := pgtest.NewBarePair(t, pgtest.Server(t), 100)
	if major := pgtest.Major(t, p.Source); major >= 18 {
		t.Skipf("the source runs PostgreSQL %d, which publishes generated columns (TestGenerated_PublishedOn18)", major)
	}
	pgtest.Exec(t, p.Source, fullNameSQL)
	env := with(p.Env(), "SYNC_COLUMNS", withFullName)
	for _, cmd := range []string{"migrate", "run"} {
		code, out := runCDC(t, env, cmd)
		if code != 2 {
			t.Fatalf("cdc %s: exit %d, want 2\n%s", cmd, code, out)
		}
		for _, want := range []string{
			"full_name is a generated column of the source table public.users",
			"cannot publish generated columns",
			"leave full_name out of SYNC_COLUMNS and let chat compute it",
			"chat's other columns, generated ones included, to chat",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("cdc %s output lacks %q:\n%s", cmd, want, out)
			}
		}
		if strings.Contains(out, "42P10") {
			t.Errorf("cdc %s shows the server's error instead of its own:\n%s", cmd, out)
		}
	}
	var pubs int
	if err := p.Source.QueryRow(context.Background(), "SELECT count(*) FROM pg_publication").Scan(&pubs); err != nil || pubs != 0 {
		t.Errorf("publications on the source after the refusal: %d (%v), want 0", pubs, err)
	}
}

// TestGenerated_PublishedOn18 syncs a stored generated column from a
// PostgreSQL 18 source, which publishes it when the publication's column
// list names it: the first copy and the streamed changes carry its value,
// and chat (a plain column there) equals the source.
func TestGenerated_PublishedOn18(t *testing.T) {
	srv, err := pglocal.Start(t.Context(), pglocal.Options{Fast: true, Bin: pgtest.BinFor(t, 18)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Stop() })
	p := pgtest.NewBarePair(t, srv, 2000)
	pgtest.Exec(t, p.Source, fullNameSQL)
	env := with(p.Env(), "SYNC_COLUMNS", withFullName, "LOG_LEVEL", "info")
	if code, out := runCDC(t, env, "migrate"); code != 0 {
		t.Fatalf("cdc migrate: exit %d\n%s", code, out)
	}
	var published []string
	if err := p.Source.QueryRow(context.Background(), "SELECT attnames FROM pg_publication_tables WHERE tablename = 'users'").Scan(&published); err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(published, "full_name") {
		t.Fatalf("the publication publishes %v, want full_name among them", published)
	}
	c := startCDC(t, env, "run")
	c.waitOutput(t, "streaming changes", 60*time.Second)
	d := &driftRun{p: p, c: c, src: fullNameSide(), chat: fullNameSide()}
	d.waitEqual(t)
	var copied int
	if err := p.Chat.QueryRow(context.Background(), "SELECT count(*) FROM users WHERE full_name LIKE 'First% Last%'").Scan(&copied); err != nil || copied != 2000 {
		t.Fatalf("chat rows with the first copy's full_name: %d (%v), want 2000", copied, err)
	}
	changeNames(t, p)
	d.waitEqual(t)
	if got := chatFullName(t, p, "ada@example.com"); got == nil || *got != "Grace Hopper" {
		t.Fatalf("chat full_name after the update: %v, want Grace Hopper", got)
	}
	if got := chatFullName(t, p, "alan@example.com"); got != nil {
		t.Fatalf("chat full_name of a row without last_name: %q, want NULL", *got)
	}
	if code := c.stop(t, 40*time.Second); code != 0 {
		t.Fatalf("cdc run: exit %d", code)
	}

	// A virtual generated column (18's default kind) cannot be published.
	v := pgtest.NewBarePair(t, srv, 10)
	pgtest.Exec(t, v.Source, "ALTER TABLE users ADD COLUMN shout text GENERATED ALWAYS AS (upper(first_name)) VIRTUAL")
	code, out := runCDC(t, with(v.Env(), "SYNC_COLUMNS", strings.Join(append(slices.Clone(pgtest.Columns), "shout"), ",")), "migrate")
	if code != 2 || !strings.Contains(out, "PostgreSQL cannot publish virtual generated columns") || !strings.Contains(out, "or define it STORED on the source") {
		t.Fatalf("cdc migrate with a virtual generated column: exit %d, want 2 and the fix\n%s", code, out)
	}
}

// TestGenerated_ChatComputes leaves the source's generated column out of
// SYNC_COLUMNS and gives chat's table a generated column of its own with
// the same expression: cdc writes only the synced columns, so chat
// computes full_name, on any version, and it equals the source's.
func TestGenerated_ChatComputes(t *testing.T) {
	p := pgtest.NewBarePair(t, pgtest.Server(t), 500)
	pgtest.Exec(t, p.Source, fullNameSQL)
	env := with(p.Env(), "LOG_LEVEL", "info")
	if code, out := runCDC(t, env, "migrate"); code != 0 {
		t.Fatalf("cdc migrate: exit %d\n%s", code, out)
	}
	pgtest.Exec(t, p.Chat, fullNameSQL)
	c := startCDC(t, env, "run")
	c.waitOutput(t, "streaming changes", 60*time.Second)
	d := &driftRun{p: p, c: c, src: fullNameSide(), chat: fullNameSide()}
	d.waitEqual(t)
	changeNames(t, p)
	d.waitEqual(t)
	if got := chatFullName(t, p, "ada@example.com"); got == nil || *got != "Grace Hopper" {
		t.Fatalf("chat full_name after the update: %v, want Grace Hopper", got)
	}
	if code := c.stop(t, 40*time.Second); code != 0 {
		t.Fatalf("cdc run: exit %d", code)
	}
}

// TestGenerated_NotifyMode syncs a stored generated column in notify mode,
// on any version: the trigger sends the key, and cdc reads the row's
// values (the generated one included) with a query, in the first copy too.
func TestGenerated_NotifyMode(t *testing.T) {
	p := pgtest.NewBarePair(t, pgtest.Server(t), 500)
	pgtest.Exec(t, p.Source, fullNameSQL)
	env := with(notifyEnv(p), "SYNC_COLUMNS", withFullName)
	migrateNotifyMode(t, env)
	c := startCDC(t, env, "run")
	d := &driftRun{p: p, c: c, src: fullNameSide(), chat: fullNameSide()}
	d.waitEqual(t)
	changeNames(t, p)
	d.waitEqual(t)
	if got := chatFullName(t, p, "ada@example.com"); got == nil || *got != "Grace Hopper" {
		t.Fatalf("chat full_name after the update: %v, want Grace Hopper", got)
	}
	if code := c.stop(t, 40*time.Second); code != 0 {
		t.Fatalf("cdc run: exit %d", code)
	}
}
