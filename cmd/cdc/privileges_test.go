package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/myusta/cdc/internal/pglocal"
	"github.com/myusta/cdc/internal/pgtest"
)

// TestRun_AsLeastPrivilegedRoles runs the whole sync as roles that are not
// superusers: cdc migrate runs as the admin and grants SOURCE_RUN_ROLE and
// CHAT_RUN_ROLE what cdc run needs; cdc run, cdc verify and cdc errors then
// log in as those roles. In replication mode the source role has only
// REPLICATION and SELECT on users; in notify mode only SELECT.
func TestRun_AsLeastPrivilegedRoles(t *testing.T) {
	for _, mode := range []string{"replication", "notify"} {
		t.Run(mode, func(t *testing.T) {
			ctx := context.Background()
			srv := pgtest.Server(t)
			admin, err := pgx.Connect(ctx, srv.DSN("postgres"))
			if err != nil {
				t.Fatal(err)
			}
			defer admin.Close(ctx)
			// Mixed-case names: every grant must quote them.
			srcRole, chatRole := "Cdc_Src_"+mode, "Cdc_Chat_"+mode
			q := func(name string) string { return pgx.Identifier{name}.Sanitize() }
			attrs := "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE"
			if mode == "replication" {
				attrs += " REPLICATION"
			}
			createRole(t, srv, srcRole, attrs)
			createRole(t, srv, chatRole, "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE")
			p := pgtest.NewBarePair(t, srv, 2000)

			adminEnv := with(p.Env(), "SYNC_MODE", mode, "SOURCE_RUN_ROLE", q(srcRole), "CHAT_RUN_ROLE", q(chatRole), "LOG_LEVEL", "info")
			code, out := runCDC(t, adminEnv, "migrate")
			if code != 0 || !strings.Contains(out, "granted "+q(srcRole)+" SELECT on public.users") || !strings.Contains(out, "granted "+q(chatRole)+" read and write") {
				t.Fatalf("cdc migrate as admin: exit %d\n%s", code, out)
			}
			env := with(adminEnv,
				"SOURCE_DATABASE_URL", strings.Replace(p.SourceURL, "postgres@", srcRole+"@", 1),
				"CHAT_DATABASE_URL", strings.Replace(p.ChatURL, "postgres@", chatRole+"@", 1))
			c := startCDC(t, env, "run")
			p.WaitEqual(t, 60*time.Second)
			var asSrc, asChat int
			if err := admin.QueryRow(ctx, "SELECT count(*) FILTER (WHERE usename = $1), count(*) FILTER (WHERE usename = $2) FROM pg_stat_activity", srcRole, chatRole).Scan(&asSrc, &asChat); err != nil {
				t.Fatal(err)
			}
			if asSrc == 0 || asChat == 0 {
				t.Fatalf("cdc run has %d sessions as %s and %d as %s; it should log in as them", asSrc, srcRole, asChat, chatRole)
			}
			stop := load(t, p, 200, 50)
			time.Sleep(3 * time.Second)
			stop()
			p.WaitEqual(t, 60*time.Second)
			if code, out := runCDC(t, env, "verify", "--full"); code != 0 {
				t.Fatalf("cdc verify --full as %s/%s: exit %d\n%s", srcRole, chatRole, code, out)
			}
			if code, out := runCDC(t, env, "errors", "list"); code != 0 {
				t.Fatalf("cdc errors list as %s: exit %d\n%s", chatRole, code, out)
			}
			if code := c.stop(t, 40*time.Second); code != 0 {
				t.Fatalf("cdc run as least-privileged roles: exit %d", code)
			}
			// The roles really are that small: the chat role cannot touch a
			// table cdc did not grant it.
			pgtest.Exec(t, p.Chat, "CREATE TABLE other (x int)")
			chatConn, err := pgx.Connect(ctx, strings.Replace(p.ChatURL, "postgres@", chatRole+"@", 1))
			if err != nil {
				t.Fatal(err)
			}
			defer chatConn.Close(ctx)
			if _, err := chatConn.Exec(ctx, "SELECT * FROM other"); err == nil || !strings.Contains(err.Error(), "permission denied") {
				t.Fatalf("chat role reads a table it was not granted: %v", err)
			}
		})
	}
}

// createRole creates role name (quoted) with attrs on srv, and drops it
// when the test ends, after the databases registered later are gone.
func createRole(t *testing.T, srv *pglocal.Server, name, attrs string) {
	t.Helper()
	ctx := context.Background()
	q := pgx.Identifier{name}.Sanitize()
	admin, err := pgx.Connect(ctx, srv.DSN("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, "CREATE ROLE "+q+" "+attrs); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c, err := pgx.Connect(context.Background(), srv.DSN("postgres"))
		if err == nil {
			_, _ = c.Exec(context.Background(), "DROP ROLE IF EXISTS "+q)
			c.Close(context.Background())
		}
	})
}
