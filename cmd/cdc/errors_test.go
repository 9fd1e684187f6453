package main

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/myusta/cdc/internal/pgtest"
)

// TestErrors_ListRetryResolve: a row the chat database refuses is recorded
// while cdc run goes on; cdc errors list shows it; retry while the cause
// remains counts another attempt and exits 1; once the cause is fixed,
// retry writes the current source row and resolves it; resolve closes a
// dead letter without writing.
func TestErrors_ListRetryResolve(t *testing.T) {
	ctx := context.Background()
	p := pgtest.NewPair(t, 100)
	env := with(p.Env(), "LOG_LEVEL", "info")
	pgtest.Exec(t, p.Chat, `ALTER TABLE users ADD CONSTRAINT no_poison CHECK (first_name NOT LIKE 'poison%')`)
	c := startCDC(t, env, "run")
	c.waitOutput(t, "streaming changes", 30*time.Second)
	if code, out := runCDC(t, env, "errors", "list", "--json"); code != 0 || len(jsonArray[deadLetter](t, out)) != 0 || !strings.Contains(out, "[]") {
		t.Fatalf("errors list --json with none: exit %d, want []\n%s", code, out)
	}
	pgtest.Exec(t, p.Source, `INSERT INTO users (id, first_name, updated_at) VALUES
  ('00000000-0000-0000-0000-0000000000e1', 'poison one', now()),
  ('00000000-0000-0000-0000-0000000000e2', 'poison two', now()),
  ('00000000-0000-0000-0000-0000000000e3', 'fine', now())`)
	c.waitOutput(t, "recorded in sync_errors", 30*time.Second)
	if code := c.stop(t, 40*time.Second); code != 0 {
		t.Fatalf("cdc run exit %d", code)
	}

	code, out := runCDC(t, env, "errors", "list")
	if code != 0 || !strings.Contains(out, "2 unresolved dead letters") || !strings.Contains(out, "check_violation") ||
		!strings.Contains(out, "00000000-0000-0000-0000-0000000000e1") {
		t.Fatalf("errors list: exit %d\n%s", code, out)
	}
	code, out = runCDC(t, env, "errors", "retry")
	if code != exitUsage || !strings.Contains(out, "needs --id N or --all") {
		t.Fatalf("errors retry without a target: exit %d\n%s", code, out)
	}

	// The cause is still there: retry fails, and counts an attempt.
	code, out = runCDC(t, env, "errors", "retry", "--all")
	if code != exitFailure || !strings.Contains(out, "2 refused again") {
		t.Fatalf("errors retry with the constraint in place: exit %d\n%s", code, out)
	}
	var open, attempts int
	if err := p.Chat.QueryRow(ctx, "SELECT count(*), max(attempts) FROM sync_errors WHERE NOT resolved").Scan(&open, &attempts); err != nil {
		t.Fatal(err)
	}
	if open != 2 || attempts != 2 {
		t.Fatalf("after a failed retry: %d open dead letters, max attempts %d; want 2 and 2", open, attempts)
	}

	// The source fixes one row, the chat constraint is relaxed: retry of
	// that id writes the current source row and resolves it.
	pgtest.Exec(t, p.Source, `UPDATE users SET first_name = 'poison one, renamed', updated_at = now() WHERE id = '00000000-0000-0000-0000-0000000000e1'`)
	pgtest.Exec(t, p.Chat, `ALTER TABLE users DROP CONSTRAINT no_poison`)
	var id1 int64
	if err := p.Chat.QueryRow(ctx, "SELECT id FROM sync_errors WHERE user_id = '00000000-0000-0000-0000-0000000000e1'").Scan(&id1); err != nil {
		t.Fatal(err)
	}
	code, out = runCDC(t, env, "errors", "retry", "--id", strconv.FormatInt(id1, 10))
	if code != 0 || !strings.Contains(out, "1 written") {
		t.Fatalf("errors retry --id: exit %d\n%s", code, out)
	}
	var first string
	if err := p.Chat.QueryRow(ctx, "SELECT first_name FROM users WHERE id = '00000000-0000-0000-0000-0000000000e1'").Scan(&first); err != nil || first != "poison one, renamed" {
		t.Fatalf("retried row in chat: %q, %v", first, err)
	}

	// resolve closes the other one without writing it.
	code, out = runCDC(t, env, "errors", "resolve", "--all")
	if code != 0 || !strings.Contains(out, "marked 1 dead letters resolved") {
		t.Fatalf("errors resolve --all: exit %d\n%s", code, out)
	}
	code, out = runCDC(t, env, "errors", "list", "--all", "--json")
	if code != 0 {
		t.Fatalf("errors list --all --json: exit %d\n%s", code, out)
	}
	var resolved int
	for _, d := range jsonArray[deadLetter](t, out) {
		if d.Resolved && d.ResolvedAt != nil {
			resolved++
		}
	}
	if resolved != 2 {
		t.Fatalf("%d resolved dead letters listed, want 2:\n%s", resolved, out)
	}
}

// jsonArray decodes the JSON array a command printed (log lines around it
// are skipped).
func jsonArray[T any](t *testing.T, out string) []T {
	t.Helper()
	i := strings.Index(out, "[\n")
	if i < 0 {
		i = strings.Index(out, "[]")
	}
	if i < 0 || (i > 0 && out[i-1] != '\n') {
		t.Fatalf("no JSON array in the output:\n%s", out)
	}
	var list []T
	if err := json.NewDecoder(strings.NewReader(out[i:])).Decode(&list); err != nil {
		t.Fatalf("decode the JSON array: %v\n%s", err, out)
	}
	return list
}
