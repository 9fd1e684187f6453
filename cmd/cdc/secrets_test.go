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

// TestSecrets_NeverLeave runs cdc against a password-protected server
// through success and failure paths and checks that the DSN password never
// appears in any output, and that password_hash never reaches chat.
func TestSecrets_NeverLeave(t *testing.T) {
	const password = "pw-Tr0ub4dor-3xyz"
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	srv, err := pglocal.Start(ctx, pglocal.Options{Fast: true, Password: password})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Stop() })
	p := pgtest.NewPairOn(t, srv, 500)
	env := p.Env()
	if !strings.Contains(env["SOURCE_DATABASE_URL"], password) {
		t.Fatal("the test DSN should carry the password")
	}
	var outputs []string
	record := func(code int, out string) { outputs = append(outputs, out) }

	record(runCDC(t, env, "migrate"))
	c := startCDC(t, env, "run")
	pgtest.Exec(t, p.Source, `INSERT INTO users (first_name, password_hash, updated_at) VALUES ('new', 'pbkdf2$very-secret-hash', now())`)
	pgtest.Exec(t, p.Source, `UPDATE users SET password_hash = 'pbkdf2$changed-secret', updated_at = now() WHERE email LIKE 'user1%'`)
	p.WaitEqual(t, 30*time.Second)
	// What the HTTP server shows: /stats, /metrics, the page, cdc status.
	addr := httpAddr(t, c)
	for _, path := range []string{"/stats", "/metrics", "/"} {
		_, body := httpGet(t, "http://"+addr+path)
		outputs = append(outputs, body)
	}
	record(runCDC(t, with(env, "HTTP_ADDR", addr), "status", "--json"))
	if code := c.stop(t, 40*time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
	outputs = append(outputs, c.out.String())
	if !strings.Contains(c.out.String(), "postgres:xxxxx@127.0.0.1") {
		t.Errorf("the start line should show the DSNs with the password masked:\n%s", c.out.String())
	}

	// Failure paths print DSN-related errors.
	code, out := runCDC(t, with(env, "SOURCE_TABLE", "public.nope"), "run")
	record(code, out)
	wrong := strings.Replace(p.ChatURL, password, "wrong-Secret-999", 1)
	code, out = runCDC(t, with(env, "CHAT_DATABASE_URL", wrong), "run")
	record(code, out)
	if code != exitUsage || !strings.Contains(out, "CHAT_DATABASE_URL") || !strings.Contains(out, "check the user and password") {
		t.Errorf("wrong password: exit %d, output:\n%s", code, out)
	}
	if strings.Contains(out, "wrong-Secret-999") {
		t.Errorf("the wrong password was printed:\n%s", out)
	}
	malformed := strings.Replace(p.SourceURL, "127.0.0.1:", "127.0.0.1:notaport", 1)
	code, out = runCDC(t, with(env, "SOURCE_DATABASE_URL", malformed), "run")
	record(code, out)
	if code != exitUsage || !strings.Contains(out, "SOURCE_DATABASE_URL") {
		t.Errorf("malformed DSN: exit %d, output:\n%s", code, out)
	}
	// A debug-level run with a text log, creating a second slot.
	c = startCDC(t, with(env, "LOG_LEVEL", "debug", "LOG_FORMAT", "text"), "run", "--slot-name", "other_slot_"+p.Name)
	c.waitOutput(t, "streaming changes", 30*time.Second)
	if code := c.stop(t, 40*time.Second); code != 0 {
		t.Fatalf("exit %d", code)
	}
	outputs = append(outputs, c.out.String())
	pgtest.Exec(t, p.Source, "SELECT pg_drop_replication_slot('other_slot_"+p.Name+"')")

	for i, out := range outputs {
		if strings.Contains(out, password) {
			t.Errorf("output %d contains the DSN password:\n%s", i, out)
		}
	}

	// password_hash is neither published nor stored in chat.
	var cols []string
	if err := p.Source.QueryRow(ctx, "SELECT attnames FROM pg_publication_tables WHERE pubname = 'cdc_users'").Scan(&cols); err != nil {
		t.Fatal(err)
	}
	for _, c := range cols {
		if c == "password_hash" {
			t.Fatalf("publication column list includes password_hash: %v", cols)
		}
	}
	var n int
	if err := p.Chat.QueryRow(ctx, "SELECT count(*) FROM information_schema.columns WHERE column_name = 'password_hash'").Scan(&n); err != nil || n != 0 {
		t.Fatalf("chat has %d password_hash columns (err %v)", n, err)
	}
	rows, err := p.Source.Query(ctx, "SELECT password_hash FROM users WHERE password_hash IS NOT NULL")
	if err != nil {
		t.Fatal(err)
	}
	hashes, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || len(hashes) < 500 {
		t.Fatalf("source hashes: %d, err %v", len(hashes), err)
	}
	var dump string
	if err := p.Chat.QueryRow(ctx, `SELECT concat((SELECT string_agg(u::text, E'\n') FROM users u), (SELECT string_agg(e::text, E'\n') FROM sync_errors e))`).Scan(&dump); err != nil {
		t.Fatal(err)
	}
	for _, h := range hashes {
		if strings.Contains(dump, h) {
			t.Fatalf("a source password_hash value (%s…) is in the chat database", h[:10])
		}
	}
}
