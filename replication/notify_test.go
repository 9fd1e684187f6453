package replication_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/myusta/cdc/internal/pgtest"
	"github.com/myusta/cdc/migrations"
	"github.com/myusta/cdc/replication"
	"github.com/myusta/cdc/sink"
)

// installTrigger installs the notify-mode trigger as `cdc migrate` does.
func installTrigger(t *testing.T, p *pgtest.Pair) {
	t.Helper()
	msg, err := migrations.EnsureNotifyTrigger(context.Background(), p.Source, migrations.SpecFor(p.Config(t)))
	if err != nil || !strings.Contains(msg, "created trigger") {
		t.Fatalf("install trigger: %q, %v", msg, err)
	}
}

// TestNotify_PayloadIsOpAndIDOnly listens on the channel while every kind
// of change (including a key change and a password change) happens, and
// checks that each payload carries op and id and nothing else.
func TestNotify_PayloadIsOpAndIDOnly(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p := pgtest.NewPair(t, 0)
	installTrigger(t, p)
	conn, err := p.Source.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "LISTEN "+migrations.NotifyChannel); err != nil {
		t.Fatal(err)
	}
	const secret = "$argon2id$v=19$m=65536,t=3,p=4$c2VjcmV0$SECRET-HASH"
	const a, b = "00000000-0000-0000-0000-0000000000a1", "00000000-0000-0000-0000-0000000000b2"
	for _, sql := range []string{
		`INSERT INTO users (id, first_name, email, password_hash, updated_at) VALUES ('` + a + `', 'Ann', 'ann@example.com', '` + secret + `', now())`,
		`UPDATE users SET password_hash = '` + secret + `-2', updated_at = now() WHERE id = '` + a + `'`,
		`UPDATE users SET id = '` + b + `' WHERE id = '` + a + `'`,
		`DELETE FROM users WHERE id = '` + b + `'`,
		`TRUNCATE users`,
	} {
		pgtest.Exec(t, p.Source, sql)
	}
	want := []string{"insert " + a, "update " + a, "delete " + a, "update " + b, "delete " + b, "truncate "}
	var got []string
	for len(got) < len(want) {
		n, err := conn.Conn().WaitForNotification(ctx)
		if err != nil {
			t.Fatalf("after %v: %v", got, err)
		}
		if strings.Contains(n.Payload, "SECRET") || strings.Contains(n.Payload, "Ann") {
			t.Errorf("payload carries row data: %s", n.Payload)
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(n.Payload), &m); err != nil {
			t.Fatalf("payload %q is not JSON: %v", n.Payload, err)
		}
		for k := range m {
			if k != "op" && k != "id" {
				t.Errorf("payload %s has key %q; only op and id are allowed", n.Payload, k)
			}
		}
		id, _ := m["id"].(string)
		got = append(got, m["op"].(string)+" "+id)
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("notifications:\n got %v\nwant %v", got, want)
	}
}

// runNotify runs a Notify source for p in the background.
func runNotify(t *testing.T, p *pgtest.Pair) *replication.Notify {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cfg := p.Config(t)
	src := replication.Source{Spec: migrations.SpecFor(cfg).Source()}
	if _, err := replication.PreflightNotify(ctx, p.Source, src); err != nil {
		t.Fatalf("preflight: %v", err)
	}
	srcTable, chatTable := p.Tables(t, cfg)
	sk := sink.New(p.Chat, chatTable, sink.Options{Slot: p.Slot, Retry: fastRetry, Logger: logger(t)})
	n := replication.NewNotify(p.Source, sk, replication.NotifyOptions{
		SourceURL: p.SourceURL, Table: srcTable, BatchMaxRows: 100, Retry: fastRetry, Logger: logger(t),
	})
	n.CatchUp = func(ctx context.Context, missed time.Duration) error {
		if missed == 0 {
			return n.CopyAll(ctx)
		}
		return nil
	}
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("notify run: %v", err)
		}
		sk.Close()
	})
	return n
}

// TestNotify_AppliesCurrentRowsAndSurvivesBadNotifications: changes arrive
// through the trigger and are applied as the current source rows;
// notifications cdc did not send (a malformed payload, an id that is not a
// key, an unknown op) are logged and skipped without stopping the listener;
// Sync returns once everything committed before it is applied.
func TestNotify_AppliesCurrentRowsAndSurvivesBadNotifications(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p := pgtest.NewPair(t, 1000)
	installTrigger(t, p)
	n := runNotify(t, p)
	p.WaitEqual(t, 30*time.Second) // the bulk copy of the first connect

	pgtest.Exec(t, p.Source, `SELECT pg_notify('user_changes', 'not json'), pg_notify('user_changes', '{"op":"update","id":"not-a-uuid"}'),
pg_notify('user_changes', '{"op":"rename","id":"x"}')`)
	pgtest.Exec(t, p.Source, `UPDATE users SET status = 'after junk', updated_at = now() WHERE email LIKE 'user1%'`)
	pgtest.Exec(t, p.Source, `DELETE FROM users WHERE email LIKE 'user2%'`)
	pgtest.Exec(t, p.Source, `INSERT INTO users (first_name, updated_at) SELECT 'new', now() FROM generate_series(1, 50)`)
	if err := n.Sync(ctx); err != nil {
		t.Fatalf("sync: %v", err)
	}
	// Sync returned: everything is applied now, no polling needed.
	if diff, err := p.Diff(ctx); err != nil || len(diff) > 0 {
		t.Fatalf("after Sync chat differs from source: %v %v", diff, err)
	}
	if got := n.Stats.Deletes.Load(); got == 0 {
		t.Errorf("no deletes counted")
	}
	pgtest.Exec(t, p.Source, `TRUNCATE users`)
	if err := n.Sync(ctx); err != nil {
		t.Fatalf("sync: %v", err)
	}
	if diff, err := p.Diff(ctx); err != nil || len(diff) > 0 {
		t.Fatalf("after TRUNCATE chat differs from source: %v %v", diff, err)
	}
}
