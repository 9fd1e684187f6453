package main

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/myusta/cdc/internal/pglocal"
	"github.com/myusta/cdc/internal/pgtest"
)

// viaBouncer is dsn pointed at the pooler, with query parameters kv set.
func viaBouncer(t *testing.T, dsn string, b *pglocal.Bouncer, kv ...string) string {
	t.Helper()
	return withHost(t, dsn, "127.0.0.1:"+strconv.Itoa(b.Port()), kv...)
}

// sessionSettings are the settings cdc sets on its own sessions, which no
// other client of a pooler may be handed.
var sessionSettings = []string{"TimeZone", "DateStyle", "IntervalStyle", "extra_float_digits", "bytea_output"}

// clientSettings reads sessionSettings on new connections to dsn, n times,
// and fails when one differs from want (nil: returns the first reading).
func clientSettings(t *testing.T, dsn string, n int, want []string) []string {
	t.Helper()
	ctx := context.Background()
	for i := 0; i < n; i++ {
		conn, err := pgx.Connect(ctx, dsn)
		if err != nil {
			t.Fatal(err)
		}
		got := make([]string, len(sessionSettings))
		for j, s := range sessionSettings {
			if err := conn.QueryRow(ctx, "SELECT current_setting($1)", pgx.QueryExecModeSimpleProtocol, s).Scan(&got[j]); err != nil {
				t.Fatal(err)
			}
		}
		_ = conn.Close(ctx)
		if want == nil {
			want = got
			continue
		}
		for j := range got {
			if got[j] != want[j] {
				t.Fatalf("a client of the pooler was handed %s = %q, its own is %q: cdc's session setting leaked", sessionSettings[j], got[j], want[j])
			}
		}
	}
	return want
}

// chatDefaults gives the chat database settings of its own that differ
// from every one cdc sets, so a leaked setting shows.
func chatDefaults(t *testing.T, p *pgtest.Pair) {
	t.Helper()
	var db string
	if err := p.Chat.QueryRow(context.Background(), "SELECT current_database()").Scan(&db); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"TimeZone = 'Asia/Kathmandu'", "DateStyle = 'SQL, DMY'", "IntervalStyle = 'iso_8601'", "extra_float_digits = 0", "bytea_output = 'escape'"} {
		pgtest.Exec(t, p.Chat, "ALTER DATABASE "+pgx.Identifier{db}.Sanitize()+" SET "+s)
	}
}

// TestPooler_SharedSessionsRefused puts chat, then the source's queries,
// behind PgBouncer in transaction and statement mode: cdc exits 2 at
// start naming the variable and the fix, and leaves no setting of its own
// on the pooler's server sessions. A replication connection through the
// pooler (even in session mode) is refused the same way.
func TestPooler_SharedSessionsRefused(t *testing.T) {
	srv := pgtest.Server(t)
	p := pgtest.NewPairOn(t, srv, 100)
	chatDefaults(t, p)
	for _, mode := range []string{"transaction", "statement"} {
		b := pgtest.Bouncer(t, srv, mode)
		chatVia := viaBouncer(t, p.ChatURL, b)
		before := clientSettings(t, chatVia, 1, nil)
		for _, side := range []string{"CHAT_DATABASE_URL", "SOURCE_DATABASE_URL"} {
			dsn := chatVia
			if side == "SOURCE_DATABASE_URL" {
				dsn = viaBouncer(t, p.SourceURL, b)
			}
			for _, cmd := range []string{"run", "migrate"} {
				code, out := runCDC(t, with(p.Env(), side, dsn), cmd)
				if code != 2 || !strings.Contains(out, side+": connections through it share server sessions") ||
					!strings.Contains(out, "pool_mode = "+mode) || !strings.Contains(out, "session mode") {
					t.Fatalf("%s mode, %s through it, cdc %s: exit %d, want 2 naming %s and the fix:\n%s", mode, side, cmd, code, side, out)
				}
			}
		}
		clientSettings(t, chatVia, 8, before)
	}

	b := pgtest.Bouncer(t, srv, "session")
	env := with(p.Env(), "SOURCE_DATABASE_URL", viaBouncer(t, p.SourceURL, b))
	code, out := runCDC(t, env, "run")
	if code != 2 || !strings.Contains(out, "SOURCE_DATABASE_URL: the replication connection cannot go through a connection pooler") ||
		!strings.Contains(out, "set SOURCE_REPLICATION_URL") {
		t.Fatalf("replication through PgBouncer: exit %d, want 2 naming SOURCE_REPLICATION_URL:\n%s", code, out)
	}
	code, out = runCDC(t, with(env, "SOURCE_REPLICATION_URL", viaBouncer(t, p.SourceURL, b, "application_name", "x")), "run")
	if code != 2 || !strings.Contains(out, "SOURCE_REPLICATION_URL: the replication connection cannot go through") {
		t.Fatalf("SOURCE_REPLICATION_URL through PgBouncer: exit %d, want 2 naming it:\n%s", code, out)
	}
}

// TestPooler_SessionMode runs two cdc instances with chat and the
// source's queries behind PgBouncer in session mode (the replication
// connection direct, through SOURCE_REPLICATION_URL) under load: the
// active one is killed -9 five times and the chat pooler restarted once.
// Chat ends equal to the source, verify --full is clean, nothing was
// applied twice, the instances never wrote at the same time, and the
// pooler's other clients keep their own settings.
func TestPooler_SessionMode(t *testing.T) {
	ctx := context.Background()
	srv := pgtest.Server(t)
	p := pgtest.NewPairOn(t, srv, 3000)
	chatDefaults(t, p)
	p.TrackApplies(t)
	pgtest.Exec(t, p.Chat, `
CREATE TABLE writer_log (app text, at timestamptz, xid xid8);
CREATE FUNCTION log_writer() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO writer_log VALUES (current_setting('application_name'), clock_timestamp(), pg_current_xact_id()); RETURN NULL; END $$;
CREATE TRIGGER log_writer AFTER INSERT OR UPDATE OR DELETE ON users FOR EACH STATEMENT EXECUTE FUNCTION log_writer();`)
	chatB := pgtest.Bouncer(t, srv, "session")
	srcB := pgtest.Bouncer(t, srv, "session")
	other := viaBouncer(t, p.ChatURL, chatB)
	want := clientSettings(t, other, 1, nil)

	envFor := func(app string) map[string]string {
		return with(p.Env(), "CHAT_DATABASE_URL", viaBouncer(t, p.ChatURL, chatB, "application_name", app),
			"SOURCE_DATABASE_URL", viaBouncer(t, p.SourceURL, srcB), "SOURCE_REPLICATION_URL", p.SourceURL,
			"BATCH_MAX_ROWS", "100", "LOG_LEVEL", "info")
	}
	apps := []string{"cdc-a", "cdc-b"}
	procs := map[string]*proc{}
	for _, app := range apps {
		procs[app] = startCDC(t, envFor(app), "run")
	}
	p.WaitEqual(t, 60*time.Second)
	stopLoad := load(t, p, 200, 100)

	// active is the instance that wrote last, once it is one that runs.
	active := func() string {
		var app string
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			err := p.Chat.QueryRow(ctx, "SELECT app FROM writer_log ORDER BY at DESC LIMIT 1").Scan(&app)
			if err == nil && procs[app] != nil && procs[app].running() {
				return app
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Fatalf("no running cdc wrote to chat within 30 s (last writer %q)", app)
		return ""
	}
	const kills = 5
	events := 0
	for i := 0; i < kills; i++ {
		time.Sleep(1500 * time.Millisecond)
		app := active()
		procs[app].kill()
		events++
		if strings.Contains(procs[app].out.String(), "panic") {
			t.Fatalf("cdc panicked:\n%s", procs[app].out.String())
		}
		// The standby takes over before the killed one comes back.
		if next := active(); next == app {
			t.Fatalf("%s was killed but is still the writer", app)
		}
		procs[app] = startCDC(t, envFor(app), "run")
		if i == 2 {
			time.Sleep(time.Second)
			if err := chatB.Restart(ctx); err != nil {
				t.Fatal(err)
			}
			events++
		}
	}
	time.Sleep(2 * time.Second)
	stopLoad()
	p.WaitEqual(t, 90*time.Second)
	for _, app := range apps {
		if !procs[app].running() {
			t.Fatalf("%s exited (code %d):\n%s", app, procs[app].code, procs[app].out.String())
		}
	}
	if code, out := runCDC(t, envFor("cdc-verify"), "verify", "--full"); code != 0 {
		t.Fatalf("verify --full: exit %d\n%s", code, out)
	}
	if _, twice := p.Applies(t); twice != 0 {
		t.Fatalf("%d row versions applied twice", twice)
	}
	// One writer at a time: each kill or pooler restart hands the writing
	// over at most once; two instances writing together would alternate.
	var switches, writes int
	if err := p.Chat.QueryRow(ctx, `SELECT count(*) FILTER (WHERE app IS DISTINCT FROM prev), count(*) FROM (
  SELECT app, lag(app) OVER (ORDER BY at, xid) AS prev FROM writer_log WHERE app LIKE 'cdc-_') s WHERE prev IS NOT NULL`).Scan(&switches, &writes); err != nil {
		t.Fatal(err)
	}
	if switches > events {
		t.Fatalf("the writing changed hands %d times over %d kills and pooler restarts: two instances wrote at once", switches, events)
	}
	if switches == 0 {
		rows, _ := p.Chat.Query(ctx, "SELECT app, count(*) FROM writer_log GROUP BY 1")
		m, _ := pgx.CollectRows(rows, pgx.RowToMap)
		t.Fatal(m, "one instance did all the writing: the test did not hand leadership over")
	}
	clientSettings(t, other, 10, want)
	for _, app := range apps {
		if code := procs[app].stop(t, 40*time.Second); code != 0 {
			t.Fatalf("%s: exit %d", app, code)
		}
	}
	t.Logf("%d kill -9 and a pooler restart: %d chat statements, leadership changed hands %d times, verify --full clean", kills, writes, switches)
}
