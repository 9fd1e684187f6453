package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/myusta/cdc/internal/pgtest"
	"github.com/myusta/cdc/internal/tablediff"
)

// Tests of tables that are not the reference schema, on two clusters: the
// chat database is on a server of its own whose type OIDs differ from the
// source's (pgtest.NewClusterPair).

const matrixTable = "public.type_matrix"

// seeded returns a random source whose seed is logged (CDC_TEST_SEED
// repeats a run).
func seeded(t *testing.T) *rand.Rand {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("CDC_TEST_SEED"); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	t.Logf("random values from seed %d (CDC_TEST_SEED=%d repeats them)", seed, seed)
	return rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
}

// matrixEnv configures cdc for the matrix table.
func matrixEnv(p *pgtest.Pair, kv ...string) map[string]string {
	return with(p.Env(), append([]string{"SOURCE_TABLE", matrixTable, "CHAT_TABLE", matrixTable,
		"SYNC_COLUMNS", strings.Join(pgtest.MatrixColumns(), ","), "SYNC_INTERVAL_MINUTES", "60", "FULL_RECONCILE_INTERVAL", "0"}, kv...)...)
}

var matrixSide = tablediff.Side{Table: matrixTable, Key: []string{"id"}, Columns: pgtest.MatrixColumns()}

// newMatrixPair creates the matrix on the source with the edge rows and n
// random ones, and migrates chat with --create-types in mode.
func newMatrixPair(t *testing.T, r *rand.Rand, n int, mode string) (*pgtest.Pair, map[string]string) {
	t.Helper()
	p := pgtest.NewClusterPair(t)
	pgtest.Exec(t, p.Source, pgtest.MatrixTypes+";"+pgtest.MatrixTable(matrixTable))
	for i, edge := range pgtest.MatrixEdges {
		pgtest.Exec(t, p.Source, pgtest.MatrixEdgeInsert(r, matrixTable, int64(-1-i), edge))
	}
	insertMatrix(t, p, r, 1, int64(n))
	env := matrixEnv(p, "SYNC_MODE", mode)
	code, out := runCDC(t, env, "migrate", "--create-types")
	if code != 0 {
		t.Fatalf("migrate --create-types: exit %d\n%s", code, out)
	}
	for _, want := range []string{"created enum public.mood on chat", "created type public.place on chat", "created domain public.email on chat"} {
		if !strings.Contains(out, want) {
			t.Errorf("migrate output lacks %q:\n%s", want, out)
		}
	}
	// The test is about separate clusters: make sure the types' OIDs differ.
	for _, typ := range []string{"mood", "address", "place", "email", "floatrange", "hstore", "citext"} {
		var a, b uint32
		q := "SELECT to_regtype($1)::oid"
		if err := p.Source.QueryRow(context.Background(), q, typ).Scan(&a); err != nil {
			t.Fatal(err)
		}
		if err := p.Chat.QueryRow(context.Background(), q, typ).Scan(&b); err != nil {
			t.Fatal(err)
		}
		if a == b {
			t.Fatalf("type %s has OID %d on both clusters: the test would not show that types are matched by name", typ, a)
		}
	}
	return p, env
}

// insertMatrix inserts random rows from..to.
func insertMatrix(t *testing.T, p *pgtest.Pair, r *rand.Rand, from, to int64) {
	t.Helper()
	var ids []int64
	for id := from; id <= to; id++ {
		ids = append(ids, id)
	}
	for len(ids) > 0 {
		n := min(len(ids), 20)
		pgtest.Exec(t, p.Source, pgtest.MatrixInsert(r, matrixTable, ids[:n]...))
		ids = ids[n:]
	}
}

// waitSame polls until chat's table a equals the source's b, value by
// value, or fails after timeout with the differences.
func waitSame(t *testing.T, p *pgtest.Pair, src, chat tablediff.Side, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		diff, err := tablediff.DiffSides(context.Background(), p.Source, p.Chat, src, chat, 5)
		if err == nil && len(diff) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("chat did not converge within %s: %v %s", timeout, err, strings.Join(diff, "\n"))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// changeMatrix makes random changes through the stream: inserts, updates of
// a few columns (leaving the out-of-line value unchanged), deletes.
func changeMatrix(t *testing.T, p *pgtest.Pair, r *rand.Rand, next *int64, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		switch k := r.IntN(10); {
		case k < 3:
			insertMatrix(t, p, r, *next, *next)
			*next++
		case k < 9:
			pgtest.Exec(t, p.Source, pgtest.MatrixUpdate(r, matrixTable, 1+r.Int64N(*next-1)))
		default:
			pgtest.Exec(t, p.Source, "DELETE FROM "+matrixTable+" WHERE id = $1", 1+r.Int64N(*next-1))
		}
	}
	// Several changes of one row in one transaction, and one that only
	// touches another column than the out-of-line one.
	id := 1 + r.Int64N(*next-1)
	pgtest.Exec(t, p.Source, "BEGIN; "+pgtest.MatrixUpdate(r, matrixTable, id)+"; "+pgtest.MatrixUpdate(r, matrixTable, id)+"; COMMIT")
	pgtest.Exec(t, p.Source, "UPDATE "+matrixTable+" SET i = i + 1, updated_at = clock_timestamp() WHERE big IS NOT NULL")
}

// TestTypes_RoundTripAcrossClusters: a column of every kind of type,
// random values and edge values, through the first copy, the stream
// (inserts, updates leaving a TOASTed value unchanged, deletes), verify,
// the reconciler's repairs, a dead letter and cdc errors retry.
func TestTypes_RoundTripAcrossClusters(t *testing.T) {
	r := seeded(t)
	p, env := newMatrixPair(t, r, 60, "replication")
	c := startCDC(t, env, "run")
	c.waitOutput(t, `"format":"text"`, 30*time.Second) // arrays and composites travel as text
	waitSame(t, p, matrixSide, matrixSide, time.Minute)

	next := int64(61)
	changeMatrix(t, p, r, &next, 80)
	waitSame(t, p, matrixSide, matrixSide, time.Minute)
	if code := c.stop(t, 30*time.Second); code != 0 {
		t.Fatalf("cdc run exited %d", code)
	}

	if code, out := runCDC(t, env, "verify", "--full"); code != 0 {
		t.Fatalf("verify --full of equal tables: exit %d\n%s", code, out)
	}
	// Drift in chat of every kind: values changed, a row gone, one extra.
	nth := func(n int) string {
		return fmt.Sprintf("(SELECT id FROM type_matrix WHERE id > 0 ORDER BY id OFFSET %d LIMIT 1)", n)
	}
	pgtest.Exec(t, p.Chat, `UPDATE type_matrix SET comp = ROW('drift', 0, '{}'), jb = '{"drift": true}', e_arr = '{}', hs = 'a=>b' WHERE id IN (`+nth(0)+`, `+nth(1)+`, `+nth(2)+`);
UPDATE type_matrix SET x = '<drift/>' WHERE id = `+nth(3)+`; UPDATE type_matrix SET f = f + 1 WHERE f IS NOT NULL AND f = f AND id BETWEEN 5 AND 9;
DELETE FROM type_matrix WHERE id = `+nth(4)+`; INSERT INTO type_matrix (id, updated_at, n) SELECT 100000, updated_at, n FROM type_matrix WHERE id = `+nth(5))
	code, out := runCDC(t, env, "verify", "--full")
	if code != exitDrift {
		t.Fatalf("verify --full after drift: exit %d, want %d\n%s", code, exitDrift, out)
	}
	if code, out := runCDC(t, env, "reconcile", "--full"); code != 0 || !strings.Contains(out, "1 missing") || !strings.Contains(out, "1 extra") {
		t.Fatalf("reconcile --full: exit %d\n%s", code, out)
	}
	waitSame(t, p, matrixSide, matrixSide, 5*time.Second)
	// The window compare (every row changed within the hour) finds drift too.
	pgtest.Exec(t, p.Chat, `UPDATE type_matrix SET comp_arr = NULL, t_arr = '{x}', mr = '{}' WHERE id IN (SELECT id FROM type_matrix WHERE id > 0 ORDER BY id LIMIT 2)`)
	if code, out := runCDC(t, env, "reconcile", "--since", "1h"); code != 0 || !strings.Contains(out, "repaired 2: 0 missing, 2 stale") {
		t.Fatalf("reconcile --since 1h: exit %d\n%s", code, out)
	}
	waitSame(t, p, matrixSide, matrixSide, 5*time.Second)

	// A value chat refuses is a dead letter; retried once allowed.
	pgtest.Exec(t, p.Chat, "ALTER TABLE type_matrix ADD CONSTRAINT not_666 CHECK (i IS DISTINCT FROM 666)")
	c = startCDC(t, env, "run")
	insertMatrix(t, p, r, next, next+1)
	pgtest.Exec(t, p.Source, "UPDATE type_matrix SET i = 666 WHERE id = $1", next)
	deadline := time.Now().Add(time.Minute)
	for {
		var open int
		var payloadOK bool
		err := p.Chat.QueryRow(context.Background(), `SELECT count(*), bool_and(payload ? 'comp_nested' AND payload->>'i' = '666')
FROM sync_errors WHERE NOT resolved AND user_id = $1`, strconv.FormatInt(next, 10)).Scan(&open, &payloadOK)
		if err == nil && open == 1 && payloadOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no dead letter for id %d (%v, %d open)\n%s", next, err, open, c.out.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
	pgtest.Exec(t, p.Chat, "ALTER TABLE type_matrix DROP CONSTRAINT not_666")
	if code, out := runCDC(t, env, "errors", "retry", "--all"); code != 0 {
		t.Fatalf("errors retry: exit %d\n%s", code, out)
	}
	waitSame(t, p, matrixSide, matrixSide, time.Minute)
	if code := c.stop(t, 30*time.Second); code != 0 {
		t.Fatalf("cdc run exited %d", code)
	}
}

// TestTypes_NotifyMode: the matrix through notify mode's copy, listener
// and verify.
func TestTypes_NotifyMode(t *testing.T) {
	r := seeded(t)
	p, env := newMatrixPair(t, r, 30, "notify")
	c := startCDC(t, env, "run")
	waitSame(t, p, matrixSide, matrixSide, time.Minute)
	next := int64(31)
	changeMatrix(t, p, r, &next, 50)
	waitSame(t, p, matrixSide, matrixSide, time.Minute)
	if code := c.stop(t, 30*time.Second); code != 0 {
		t.Fatalf("cdc run exited %d", code)
	}
	if code, out := runCDC(t, env, "verify", "--full"); code != 0 {
		t.Fatalf("verify --full: exit %d\n%s", code, out)
	}
}

// TestTypes_ScalarTypesTravelInBinary: user-defined and extension scalars
// (enum, citext, hstore, a domain, a range) have other OIDs on chat, but
// their binary forms carry none, so such a table travels in binary.
func TestTypes_ScalarTypesTravelInBinary(t *testing.T) {
	p := pgtest.NewClusterPair(t)
	pgtest.Exec(t, p.Source, pgtest.MatrixTypes+`;
CREATE TABLE scalars (id uuid PRIMARY KEY, updated_at timestamptz NOT NULL, e mood, c citext, h hstore, d email, r floatrange, n numeric, iv interval);
INSERT INTO scalars SELECT gen_random_uuid(), now(), (enum_range(NULL::mood))[1 + g % 4], 'MiXed' || g, hstore('k' || g, NULL),
  'a@' || g, floatrange(g, g + 0.5), g / 7.0, g * interval '1 day 3 seconds' FROM generate_series(1, 200) g`)
	cols := "id,updated_at,e,c,h,d,r,n,iv"
	env := with(p.Env(), "SOURCE_TABLE", "scalars", "CHAT_TABLE", "scalars", "SYNC_COLUMNS", cols)
	if code, out := runCDC(t, env, "migrate", "--create-types"); code != 0 {
		t.Fatalf("migrate: exit %d\n%s", code, out)
	}
	side := tablediff.Side{Table: "public.scalars", Key: []string{"id"}, Columns: strings.Split(cols, ",")}
	c := startCDC(t, env, "run")
	c.waitOutput(t, `"format":"binary"`, 30*time.Second)
	waitSame(t, p, side, side, time.Minute)
	pgtest.Exec(t, p.Source, `UPDATE scalars SET e = 'it''s "complicated", {really}', c = upper(c::text), h = h || hstore('x', 'y"z'), updated_at = now() WHERE n < 10;
DELETE FROM scalars WHERE n > 25; INSERT INTO scalars VALUES (gen_random_uuid(), now(), 'ok', 'new', '', 'b@c', 'empty', 'NaN', '-1 year')`)
	waitSame(t, p, side, side, time.Minute)
	if code := c.stop(t, 30*time.Second); code != 0 {
		t.Fatalf("cdc run exited %d", code)
	}
	if code, out := runCDC(t, env, "verify", "--full"); code != 0 {
		t.Fatalf("verify --full: exit %d\n%s", code, out)
	}
}

// TestTypes_AssignmentCasts: chat may declare a column with another type
// where PostgreSQL converts on assignment (enum → text, int4 → int8, json →
// jsonb, varchar(255) → text, timestamp → timestamptz); values arrive, and
// the compare sees equal rows as equal, so nothing is repaired forever.
func TestTypes_AssignmentCasts(t *testing.T) {
	p := pgtest.NewClusterPair(t)
	pgtest.Exec(t, p.Source, `CREATE TYPE mood AS ENUM ('sad', 'happy');
CREATE TABLE casts (id int PRIMARY KEY, updated_at timestamptz NOT NULL, e mood, n int, j json, vc varchar(255), ts timestamp, tags mood[]);
INSERT INTO casts SELECT g, now(), 'happy', g, ('{"b": ' || g || ',  "a": [1,  2]}')::json, 'v' || g, '2024-02-29 12:00:00', '{sad,happy}' FROM generate_series(1, 100) g`)
	pgtest.Exec(t, p.Chat, `CREATE TABLE casts (id bigint PRIMARY KEY, updated_at timestamptz NOT NULL, e text, n bigint, j jsonb, vc text, ts timestamptz, tags text[], chat_only text DEFAULT 'mine');
CREATE INDEX ON casts (updated_at)`)
	env := with(p.Env(), "SOURCE_TABLE", "casts", "CHAT_TABLE", "casts", "SYNC_COLUMNS", "id,updated_at,e,n,j,vc,ts,tags")
	if code, out := runCDC(t, env, "migrate"); code != 0 {
		t.Fatalf("migrate: exit %d\n%s", code, out)
	}
	c := startCDC(t, env, "run")
	same := func() bool {
		var n int
		err := p.Chat.QueryRow(context.Background(), `SELECT count(*) FROM casts WHERE chat_only = 'mine' AND e = 'happy' AND n = id AND j = jsonb_build_object('a', jsonb_build_array(1, 2), 'b', id)
AND vc = 'v' || id AND ts = '2024-02-29 12:00:00+00' AND tags = '{sad,happy}'`).Scan(&n)
		return err == nil && n == 100
	}
	deadline := time.Now().Add(time.Minute)
	for !same() {
		if time.Now().After(deadline) {
			t.Fatalf("chat did not get the converted values\n%s", c.out.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
	pgtest.Exec(t, p.Source, "UPDATE casts SET e = 'sad', updated_at = now() WHERE id = 1")
	c.waitOutput(t, `"msg":"synced"`, 30*time.Second)
	if code := c.stop(t, 30*time.Second); code != 0 {
		t.Fatalf("cdc run exited %d", code)
	}
	if code, out := runCDC(t, env, "verify", "--full"); code != 0 {
		t.Fatalf("verify --full of converted values: exit %d\n%s", code, out)
	}
	code, out := runCDC(t, env, "reconcile", "--full")
	if code != 0 || !strings.Contains(out, "repaired 0") {
		t.Fatalf("reconcile --full found something to repair in equal tables: exit %d\n%s", code, out)
	}
}

// TestTypes_MismatchesStopAtStart: types that cannot meet, unknown columns
// and a forced binary format the table cannot have stop cdc run with exit 2
// and a line naming the column and both types, before any slot exists.
func TestTypes_MismatchesStopAtStart(t *testing.T) {
	cases := []struct {
		name, chatDDL string
		env           []string
		want          []string
	}{
		{"chat lacks the source's composite type", "CREATE TABLE things (id int PRIMARY KEY, updated_at timestamptz, addr jsonb, tags int[])", nil,
			[]string{"column addr is address on the source and jsonb on chat, and chat has no type public.address"}},
		{"no assignment cast", "CREATE TYPE address AS (street text, zip int, tags text[]); CREATE TABLE things (id int PRIMARY KEY, updated_at timestamptz, addr address, tags int[])", nil,
			[]string{"column tags is text[] on the source but integer[] on chat, and PostgreSQL has no assignment cast"}},
		// migrate adds the synced columns chat lacks (tags), which the
		// two cases below then drop again, as someone might.
		{"unknown column", "CREATE TYPE address AS (street text, zip int, tags text[]); CREATE TABLE things (id int PRIMARY KEY, updated_at timestamptz, addr address)", nil,
			[]string{"table public.things has no column tags on the chat database"}},
		{"binary forced", "CREATE TYPE address AS (street text, zip int, tags text[]); CREATE TABLE things (id int PRIMARY KEY, updated_at timestamptz, addr address, tags text[])",
			[]string{"WIRE_FORMAT", "binary"}, []string{"column addr: composite values carry their field types' OIDs", "column tags: arrays carry their element type's OID", "WIRE_FORMAT=binary"}},
		{"case folded", "CREATE TYPE address AS (street text, zip int, tags text[]); CREATE TABLE things (id int PRIMARY KEY, updated_at timestamptz, addr address, \"Tags\" text[])", []string{"SYNC_COLUMNS", "id,updated_at,addr,Tags"},
			[]string{`has no column tags (did you mean "Tags"? unquoted names are folded to lower case)`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := pgtest.NewClusterPair(t)
			pgtest.Exec(t, p.Source, `CREATE TYPE address AS (street text, zip int, tags text[]);
CREATE TABLE things (id int PRIMARY KEY, updated_at timestamptz, addr address, tags text[], "Tags" text[])`)
			pgtest.Exec(t, p.Chat, tc.chatDDL)
			env := with(p.Env(), append([]string{"SOURCE_TABLE", "things", "CHAT_TABLE", "things", "SYNC_COLUMNS", "id,updated_at,addr,tags"}, tc.env...)...)
			code, out := runCDC(t, with(env, "WIRE_FORMAT", "auto"), "migrate")
			if code != 0 {
				t.Fatalf("migrate: exit %d\n%s", code, out)
			}
			if tc.name == "unknown column" || tc.name == "case folded" {
				if !strings.Contains(out, "added column tags text[] to public.things") {
					t.Fatalf("migrate did not add the missing column:\n%s", out)
				}
				pgtest.Exec(t, p.Chat, "ALTER TABLE things DROP COLUMN tags")
			}
			code, out = runCDC(t, env, "run")
			if code != exitUsage {
				t.Fatalf("exit %d, want %d\n%s", code, exitUsage, out)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			var slots int
			if err := p.Source.QueryRow(context.Background(), "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", p.Slot).Scan(&slots); err != nil || slots != 0 {
				t.Errorf("a slot was created (%d, %v)", slots, err)
			}
		})
	}
	t.Run("migrate without the chat's composite type", func(t *testing.T) {
		p := pgtest.NewClusterPair(t)
		pgtest.Exec(t, p.Source, `CREATE TYPE address AS (street text, zip int); CREATE TABLE things (id int PRIMARY KEY, updated_at timestamptz, addr address)`)
		env := with(p.Env(), "SOURCE_TABLE", "things", "CHAT_TABLE", "things", "SYNC_COLUMNS", "id,updated_at,addr")
		code, out := runCDC(t, env, "migrate")
		if code != exitUsage || !strings.Contains(out, `column addr is public.address, which chat lacks: create it there (CREATE TYPE "public"."address" AS ("street" text, "zip" integer)) or run cdc migrate --create-types`) {
			t.Fatalf("exit %d\n%s", code, out)
		}
	})
}
