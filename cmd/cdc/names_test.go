package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/myusta/cdc/internal/pgtest"
	"github.com/myusta/cdc/internal/tablediff"
)

// sequelizeUsers is the table a Node ORM creates (Sequelize, or Prisma
// without @map): quoted camelCase names, an enum named after the table, a
// password column, and here also a key of two columns, a reserved word and a
// name with spaces and symbols.
const sequelizeUsers = `CREATE EXTENSION IF NOT EXISTS citext;
CREATE SCHEMA "App";
CREATE TYPE "App"."enum_Users_status" AS ENUM ('active', 'Suspended', 'pending review');
CREATE TABLE "App"."Users" (
  "tenantId" integer NOT NULL,
  id integer NOT NULL,
  "firstName" varchar(255) NOT NULL,
  "lastName" varchar(255),
  email citext,
  status "App"."enum_Users_status" DEFAULT 'active',
  "profilePicture" text,
  password varchar(255),
  "user" text,
  "e-mail address (work)" text,
  "createdAt" timestamptz NOT NULL DEFAULT now(),
  "updatedAt" timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY ("tenantId", id)
);
CREATE INDEX ON "App"."Users" ("updatedAt");
INSERT INTO "App"."Users" ("tenantId", id, "firstName", "lastName", email, status, "profilePicture", password, "user", "e-mail address (work)")
SELECT 1 + g % 3, g, 'First' || g, 'O''Brien "' || g || '"', 'User' || g || '@Example.com', (enum_range(NULL::"App"."enum_Users_status"))[1 + g % 3],
  'https://cdn/' || g, 'bcrypt$secret' || g, 'u' || g, 'w' || g || '@work' FROM generate_series(1, 60) g;`

// sequelizeEnv configures cdc for "App"."Users" into chat."Members", with
// profilePicture mapped to avatar_url, in mode.
func sequelizeEnv(p *pgtest.Pair, mode string) map[string]string {
	return with(p.Env(), "SYNC_MODE", mode, "SOURCE_TABLE", `"App"."Users"`, "CHAT_TABLE", `chat."Members"`,
		"SYNC_COLUMNS", `"tenantId", id, "firstName", "lastName", email, status, "profilePicture" AS avatar_url, "user", "e-mail address (work)", "createdAt", "updatedAt"`,
		"UPDATED_AT_COLUMN", `"updatedAt"`, "SECRET_COLUMNS", "password", "SYNC_INTERVAL_MINUTES", "60", "FULL_RECONCILE_INTERVAL", "0")
}

var (
	sequelizeSource = tablediff.Side{Table: `"App"."Users"`, Key: []string{"tenantId", "id"},
		Columns: []string{"tenantId", "id", "firstName", "lastName", "email", "status", "profilePicture", "user", "e-mail address (work)", "createdAt", "updatedAt"}}
	sequelizeChat = tablediff.Side{Table: `chat."Members"`, Key: []string{"tenantId", "id"},
		Columns: []string{"tenantId", "id", "firstName", "lastName", "email", "status", "avatar_url", "user", "e-mail address (work)", "createdAt", "updatedAt"}}
)

// TestNames_SequelizeUsersTable: a Node ORM's table in both sync modes:
// names exactly as the catalog has them, a two-column key (also changed by
// an update), a mapped column, a chat-only column cdc never writes, the
// secret column never in chat, a dead letter with a two-column key retried.
func TestNames_SequelizeUsersTable(t *testing.T) {
	for _, mode := range []string{"replication", "notify"} {
		t.Run(mode, func(t *testing.T) {
			p := pgtest.NewClusterPair(t)
			pgtest.Exec(t, p.Source, sequelizeUsers)
			// Chat has citext (an operator installs it); the enum it lacks
			// becomes text.
			pgtest.Exec(t, p.Chat, "CREATE EXTENSION citext")
			env := sequelizeEnv(p, mode)
			code, out := runCDC(t, env, "migrate")
			if code != 0 {
				t.Fatalf("migrate: exit %d\n%s", code, out)
			}
			for _, want := range []string{`chat: column status: chat has no enum "App"."enum_Users_status", so the column is text`, `created table chat."Members"`} {
				if !strings.Contains(out, want) {
					t.Errorf("migrate output lacks %q:\n%s", want, out)
				}
			}
			pgtest.Exec(t, p.Chat, `ALTER TABLE chat."Members" ADD COLUMN "lastSeenAt" timestamptz NOT NULL DEFAULT '2001-02-03 04:05:06+00',
  ADD CONSTRAINT "no poison" CHECK ("firstName" <> 'Poison')`)
			c := startCDC(t, env, "run")
			waitSame(t, p, sequelizeSource, sequelizeChat, time.Minute)

			pgtest.Exec(t, p.Source, `UPDATE "App"."Users" SET "firstName" = 'Renamed ' || id, status = 'Suspended', "updatedAt" = now() WHERE id % 4 = 0;
UPDATE "App"."Users" SET "tenantId" = 9, "updatedAt" = now() WHERE id IN (5, 6);
DELETE FROM "App"."Users" WHERE id IN (7, 8);
INSERT INTO "App"."Users" ("tenantId", id, "firstName", email, "profilePicture", password) VALUES (2, 1000, 'Ünïcødé "quoted"', 'NEW@example.com', 'p', 'x'), (3, 1001, 'Poison', NULL, NULL, 'y');`)
			// The refused row is one dead letter whose id names both key columns.
			deadline := time.Now().Add(time.Minute)
			for {
				var n int
				err := p.Chat.QueryRow(context.Background(), `SELECT count(*) FROM sync_errors WHERE NOT resolved AND user_id = '["3","1001"]' AND error_type = 'check_violation'`).Scan(&n)
				if err == nil && n == 1 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("no dead letter for (3, 1001): %v %d\n%s", err, n, c.out.String())
				}
				time.Sleep(200 * time.Millisecond)
			}
			pgtest.Exec(t, p.Chat, `ALTER TABLE chat."Members" DROP CONSTRAINT "no poison"`)
			if code, out := runCDC(t, env, "errors", "retry", "--all"); code != 0 {
				t.Fatalf("errors retry: exit %d\n%s", code, out)
			}
			waitSame(t, p, sequelizeSource, sequelizeChat, time.Minute)

			var untouched, keys int
			var secret bool
			err := p.Chat.QueryRow(context.Background(), `SELECT count(*) FILTER (WHERE "lastSeenAt" = '2001-02-03 04:05:06+00'), count(*) FILTER (WHERE "tenantId" = 9),
  EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = 'chat' AND column_name = 'password')
FROM chat."Members"`).Scan(&untouched, &keys, &secret)
			if err != nil || untouched != 60 || keys != 2 || secret {
				t.Fatalf("chat-only column untouched on %d of 60 rows, %d rows moved to tenant 9 (want 2), password column in chat: %v (%v)", untouched, keys, secret, err)
			}
			if code := c.stop(t, 30*time.Second); code != 0 {
				t.Fatalf("cdc run exited %d", code)
			}
			if code, out := runCDC(t, env, "verify", "--full"); code != 0 {
				t.Fatalf("verify --full: exit %d\n%s", code, out)
			}
			pgtest.Exec(t, p.Chat, `UPDATE chat."Members" SET avatar_url = 'drift' WHERE id = 1`)
			code, out = runCDC(t, env, "verify", "--full")
			if code != exitDrift || !strings.Contains(out, `stale   ["2","1"]`) {
				t.Fatalf("verify --full after drift: exit %d\n%s", code, out)
			}
		})
	}
}

// TestNames_ConfigurationHints: a name written without quotes is folded,
// as PostgreSQL folds it; when the catalog has it in another case, the
// error says how to write it.
func TestNames_ConfigurationHints(t *testing.T) {
	p := pgtest.NewClusterPair(t)
	pgtest.Exec(t, p.Source, sequelizeUsers)
	for _, tc := range []struct{ env, want []string }{
		{[]string{"SOURCE_TABLE", "App.Users"}, []string{`table app.users does not exist (there is "App"."Users": unquoted names are folded to lower case, quote the name to keep its case)`}},
		{[]string{"SOURCE_TABLE", `"App"."Users"`, "SYNC_COLUMNS", `tenantId,id,firstName,"updatedAt"`, "UPDATED_AT_COLUMN", `"updatedAt"`},
			[]string{`has no column tenantid (did you mean "tenantId"?`, `firstname (did you mean "firstName"?`}},
		{[]string{"SOURCE_TABLE", `"App"."Users"`, "SYNC_COLUMNS", `id,"firstName","updatedAt"`, "UPDATED_AT_COLUMN", `"updatedAt"`},
			[]string{`SYNC_COLUMNS must include the key of "App"."Users": ("tenantId", id)`}},
	} {
		env := with(p.Env(), tc.env...)
		code, out := runCDC(t, env, "migrate")
		if code != exitUsage {
			t.Fatalf("%v: migrate exit %d, want %d\n%s", tc.env, code, exitUsage, out)
		}
		for _, w := range tc.want {
			if !strings.Contains(out, w) {
				t.Errorf("%v: output lacks %q:\n%s", tc.env, w, out)
			}
		}
	}
}
