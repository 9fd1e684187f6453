package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/myusta/cdc/internal/pglocal"
	"github.com/myusta/cdc/internal/pgtest"
)

// TestRun_BadInputCatalogue: each setup problem ends the command at once
// with one line naming the cause and the fix: exit 2 for configuration
// (bad values, logins, missing objects, server settings), 1 for a database
// that cannot be reached by a command that ends. (The daemon keeps trying
// an unreachable database: TestRun_KeepsTryingAnUnreachableDatabase; a
// wrong password: TestSecrets_NeverLeave; wal_level=replica:
// TestRun_PreflightWalLevel; a slot held by a running consumer:
// TestRun_SlotHeldByAnotherProcessIsRetried.)
func TestRun_BadInputCatalogue(t *testing.T) {
	cases := []struct {
		name  string
		setup func(t *testing.T, p *pgtest.Pair, env map[string]string)
		want  []string
		args  []string // default: run
		code  int      // default: exitUsage
	}{
		{
			name: "missing database",
			setup: func(t *testing.T, p *pgtest.Pair, env map[string]string) {
				env["SOURCE_DATABASE_URL"] = strings.Replace(p.SourceURL, "/src_"+p.Name, "/nope", 1)
			},
			want: []string{"SOURCE_DATABASE_URL", `database "nope" does not exist: check the database name`},
		},
		{
			name: "unknown role",
			setup: func(t *testing.T, p *pgtest.Pair, env map[string]string) {
				env["CHAT_DATABASE_URL"] = strings.Replace(p.ChatURL, "postgres@", "nosuchrole@", 1)
			},
			want: []string{"CHAT_DATABASE_URL", "the server refused the login", "check the user and password"},
		},
		{
			name: "unreachable host, one-shot command",
			setup: func(t *testing.T, p *pgtest.Pair, env map[string]string) {
				env["SOURCE_DATABASE_URL"] = "postgres://postgres@127.0.0.1:1/x?sslmode=disable&connect_timeout=2"
			},
			args: []string{"verify"},
			code: exitFailure,
			want: []string{"cannot reach the database of SOURCE_DATABASE_URL", "check its host and port"},
		},
		{
			name: "slot taken by another plugin",
			setup: func(t *testing.T, p *pgtest.Pair, env map[string]string) {
				pgtest.Exec(t, p.Source, "SELECT pg_create_logical_replication_slot($1, 'test_decoding')", p.Slot)
				t.Cleanup(func() { _, _ = p.Source.Exec(context.Background(), "SELECT pg_drop_replication_slot($1)", p.Slot) })
			},
			want: []string{"belongs to another consumer (plugin test_decoding", "set SLOT_NAME to a free name"},
		},
		{
			name: "batch size out of range",
			setup: func(t *testing.T, p *pgtest.Pair, env map[string]string) {
				env["BATCH_MAX_ROWS"] = "0"
			},
			want: []string{"BATCH_MAX_ROWS", "an integer from 1 to 1000000"},
		},
		{
			name: "negative retry delay",
			setup: func(t *testing.T, p *pgtest.Pair, env map[string]string) {
				env["RETRY_INITIAL_DELAY"] = "-5"
			},
			want: []string{"RETRY_INITIAL_DELAY"},
		},
		{
			name: "HTTP address without a port",
			setup: func(t *testing.T, p *pgtest.Pair, env map[string]string) {
				env["HTTP_ADDR"] = "localhost"
			},
			want: []string{"HTTP_ADDR", "is not host:port"},
		},
		{
			name: "DSN that does not parse",
			setup: func(t *testing.T, p *pgtest.Pair, env map[string]string) {
				env["SOURCE_DATABASE_URL"] = "postgres://%zz"
			},
			want: []string{"SOURCE_DATABASE_URL"},
		},
		{
			name: "publication missing",
			setup: func(t *testing.T, p *pgtest.Pair, env map[string]string) {
				pgtest.Exec(t, p.Source, "DROP PUBLICATION cdc_users")
			},
			want: []string{`publication cdc_users does not exist on the source`, "run cdc migrate"},
		},
		{
			name: "table missing",
			setup: func(t *testing.T, p *pgtest.Pair, env map[string]string) {
				env["SOURCE_TABLE"] = "public.nope"
			},
			want: []string{"table public.nope does not exist on the source database", "check SOURCE_TABLE"},
		},
		{
			name: "no primary key",
			setup: func(t *testing.T, p *pgtest.Pair, env map[string]string) {
				pgtest.Exec(t, p.Source, "CREATE TABLE nopk AS SELECT * FROM users")
				env["SOURCE_TABLE"] = "public.nopk"
			},
			want: []string{"no primary key", `ALTER TABLE "public"."nopk" ADD PRIMARY KEY`, "KEY_COLUMNS"},
		},
		{
			name: "column missing",
			setup: func(t *testing.T, p *pgtest.Pair, env map[string]string) {
				env["SYNC_COLUMNS"] = "id,first_name,nickname,updated_at"
			},
			want: []string{"has no column nickname", "check SYNC_COLUMNS"},
		},
		{
			name: "role without REPLICATION",
			setup: func(t *testing.T, p *pgtest.Pair, env map[string]string) {
				pgtest.Exec(t, p.Source, "CREATE ROLE norepl_"+p.Name+" LOGIN; GRANT SELECT ON users TO norepl_"+p.Name)
				env["SOURCE_DATABASE_URL"] = strings.Replace(p.SourceURL, "postgres@", "norepl_"+p.Name+"@", 1)
			},
			want: []string{"lacks the REPLICATION attribute", `ALTER ROLE "norepl_`},
		},
		{
			name: "chat not migrated",
			setup: func(t *testing.T, p *pgtest.Pair, env map[string]string) {
				pgtest.Exec(t, p.Chat, "DROP TABLE cdc_schema_version, cdc_checkpoint, sync_errors")
			},
			want: []string{"the chat database is not migrated", "run cdc migrate"},
		},
		{
			name: "chat table missing",
			setup: func(t *testing.T, p *pgtest.Pair, env map[string]string) {
				env["CHAT_TABLE"] = "public.members"
			},
			want: []string{"table public.members does not exist on the chat database", "run cdc migrate"},
		},
		{
			name: "chat column of a type the source's cannot become",
			setup: func(t *testing.T, p *pgtest.Pair, env map[string]string) {
				pgtest.Exec(t, p.Chat, "ALTER TABLE users ALTER COLUMN created_at TYPE bigint USING 0")
			},
			want: []string{"column created_at is timestamp with time zone on the source but bigint on chat", "no assignment cast"},
		},
		{
			name: "notify trigger missing",
			setup: func(t *testing.T, p *pgtest.Pair, env map[string]string) {
				env["SYNC_MODE"] = "notify"
			},
			want: []string{"the notify trigger user_changes_trigger is not installed (or disabled) on public.users", "run cdc migrate with SYNC_MODE=notify"},
		},
		{
			name: "invalid setting",
			setup: func(t *testing.T, p *pgtest.Pair, env map[string]string) {
				env["SYNC_MODE"] = "sideways"
			},
			want: []string{"SYNC_MODE", `"sideways" is not a mode: use replication or notify`},
		},
		{
			name: "secret column requested",
			setup: func(t *testing.T, p *pgtest.Pair, env map[string]string) {
				env["SYNC_COLUMNS"] = "id,first_name,password_hash,updated_at"
			},
			want: []string{"SYNC_COLUMNS", `must not include password_hash`},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := pgtest.NewPair(t, 10)
			env := p.Env()
			tc.setup(t, p, env)
			args, want := tc.args, tc.code
			if args == nil {
				args = []string{"run"}
			}
			if want == 0 {
				want = exitUsage
			}
			code, out := runCDC(t, env, args...)
			if code != want {
				t.Fatalf("exit code %d, want %d; output:\n%s", code, want, out)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
		})
	}
}

// TestRun_KeepsTryingAnUnreachableDatabase: the daemon does not exit when
// a database cannot be reached (it may be starting, or failing over); it
// says what to check while it retries.
func TestRun_KeepsTryingAnUnreachableDatabase(t *testing.T) {
	p := pgtest.NewPair(t, 10)
	env := with(p.Env(), "CHAT_DATABASE_URL", "postgres://postgres@127.0.0.1:1/x?sslmode=disable", "MAX_RECONNECT_ATTEMPTS", "2", "RETRY_MAX_DELAY", "200")
	c := startCDC(t, env, "run")
	c.waitOutput(t, "connect to CHAT_DATABASE_URL (if this persists: check its host and port, and that PostgreSQL is running) failed; retrying", 20*time.Second)
	c.waitOutput(t, `"level":"ERROR"`, 20*time.Second) // loud after MAX_RECONNECT_ATTEMPTS
	if !c.running() {
		t.Fatalf("cdc run exited (code %d) instead of retrying", c.code)
	}
	if code := c.stop(t, 20*time.Second); code != 0 {
		t.Fatalf("exit %d after SIGTERM while retrying", code)
	}
}

// TestRun_PreflightWalLevel runs against a server with wal_level=replica.
func TestRun_PreflightWalLevel(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, err := pglocal.Start(ctx, pglocal.Options{Fast: true, Settings: map[string]string{"wal_level": "replica"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Stop() })
	p := pgtest.NewPairOn(t, srv, 10)
	code, out := runCDC(t, p.Env(), "run")
	if code != exitUsage || !strings.Contains(out, `wal_level is "replica" on the source`) || !strings.Contains(out, "ALTER SYSTEM SET wal_level = logical") {
		t.Fatalf("exit %d, output:\n%s", code, out)
	}
}

// TestMigrate_IsIdempotentAndRunSaysWhatToRun: before migrating, run names
// the command; migrate creates everything; a second migrate changes nothing;
// a changed column list is applied to the publication.
func TestMigrate_IsIdempotentAndRunSaysWhatToRun(t *testing.T) {
	p := pgtest.NewBarePair(t, pgtest.Server(t), 10)
	env := p.Env()
	code, out := runCDC(t, env, "run")
	if code != exitUsage || !strings.Contains(out, "run cdc migrate") {
		t.Fatalf("run before migrate: exit %d\n%s", code, out)
	}
	code, out = runCDC(t, env, "migrate")
	for _, w := range []string{"applied 4 migration(s)", "created table public.users", "created publication cdc_users"} {
		if code != 0 || !strings.Contains(out, w) {
			t.Fatalf("first migrate: exit %d, want %q in:\n%s", code, w, out)
		}
	}
	code, out = runCDC(t, env, "migrate")
	for _, w := range []string{"cdc tables up to date", "table public.users exists", "publication cdc_users up to date"} {
		if code != 0 || !strings.Contains(out, w) {
			t.Fatalf("second migrate: exit %d, want %q in:\n%s", code, w, out)
		}
	}
	narrower := with(env, "SYNC_COLUMNS", "id,first_name,email,updated_at")
	code, out = runCDC(t, narrower, "migrate")
	if code != 0 || !strings.Contains(out, "now publishes") {
		t.Fatalf("migrate with fewer columns: exit %d\n%s", code, out)
	}
	var cols []string
	if err := p.Source.QueryRow(context.Background(), "SELECT attnames FROM pg_publication_tables WHERE pubname = 'cdc_users'").Scan(&cols); err != nil {
		t.Fatal(err)
	}
	if strings.Join(cols, ",") != "id,first_name,email,updated_at" {
		t.Fatalf("publication columns %v", cols)
	}
	// The narrower list still syncs.
	c := startCDC(t, narrower, "run")
	c.waitOutput(t, "streaming changes", 30*time.Second)
	if code := c.stop(t, 40*time.Second); code != 0 {
		t.Fatalf("exit %d\n%s", code, c.out.String())
	}
	var n int
	if err := p.Chat.QueryRow(context.Background(), "SELECT count(*) FROM users WHERE email IS NOT NULL AND last_name IS NULL").Scan(&n); err != nil || n != 10 {
		t.Fatalf("narrow sync copied %d rows with email and without last_name (want 10), err %v", n, err)
	}
}

// TestRun_SourceOlderThan15 runs run and migrate against a PostgreSQL 14
// source: both exit 2 saying why (publication column lists, which keep
// secret columns on the source, arrived in 15) and what to do.
func TestRun_SourceOlderThan15(t *testing.T) {
	srv, err := pglocal.Start(t.Context(), pglocal.Options{Fast: true, Bin: pgtest.BinFor(t, 14)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Stop() })
	p := pgtest.NewBarePair(t, srv, 10)
	for _, cmd := range []string{"migrate", "run"} {
		code, out := runCDC(t, p.Env(), cmd)
		if code != exitUsage || !strings.Contains(out, "the source runs PostgreSQL 14") || !strings.Contains(out, "SYNC_MODE=notify") {
			t.Errorf("%s: exit %d, output:\n%s", cmd, code, out)
		}
	}
}
