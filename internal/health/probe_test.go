package health

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/myusta/cdc/internal/db"
	"github.com/myusta/cdc/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// TestProbe_DeadLettersAndReachability probes a real chat database: the
// unresolved count (resolved rows excluded), the newest rows without their
// payload, and an unreachable source reported with its error.
func TestProbe_DeadLettersAndReachability(t *testing.T) {
	p := pgtest.NewPair(t, 0)
	pgtest.Exec(t, p.Chat, `INSERT INTO sync_errors (error_type, user_id, message, payload, lsn) VALUES
  ('unique_violation', 'u1', 'duplicate key value violates unique constraint "users_email_key"', '{"email": "secret@example.com"}', '0/16B3748'),
  ('value_too_long', 'u2', 'value too long for type character varying(20)', '{}', NULL),
  ('check_violation', 'u3', 'violates check constraint', '{}', NULL)`)
	pgtest.Exec(t, p.Chat, `UPDATE sync_errors SET resolved = true, resolved_at = now() WHERE user_id = 'u3'`)
	dead, err := db.NewPool(context.Background(), "postgres://nobody@127.0.0.1:1/none?connect_timeout=2", 2)
	if err != nil {
		t.Fatal(err)
	}
	defer dead.Close()

	m := newTestMonitor("replication")
	m.Attach(Parts{Source: &fakeStream{}, Writes: &fakeWrites{}, SourcePool: dead, ChatPool: p.Chat})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go m.Run(ctx)
	deadline := time.Now().Add(15 * time.Second)
	var st *Stats
	for {
		st = m.Stats(time.Now())
		if len(st.Databases) == 2 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(st.Databases) != 2 || st.Databases[0].Reachable || st.Databases[0].Error == "" || !st.Databases[1].Reachable {
		t.Fatalf("databases = %+v; want source unreachable with its error, chat reachable", st.Databases)
	}
	if c := st.HealthStatus.Checks[CheckDatabases]; c.Status != Fail || !strings.Contains(c.Message, "source database unreachable") {
		t.Errorf("databases check = %+v", c)
	}
	if u := st.DeadLetters.Unresolved; u == nil || *u != 2 {
		t.Errorf("unresolved = %v, want 2", u)
	}
	recent := st.DeadLetters.Recent
	if len(recent) != 3 || recent[0].UserID != "u3" || !recent[0].Resolved || recent[2].LSN != "0/16B3748" || recent[1].Resolved {
		t.Errorf("recent = %+v; want u3 (resolved), u2, u1 with its LSN", recent)
	}
	if c := st.HealthStatus.Checks[CheckDeadLetters]; c.Status != Warn {
		t.Errorf("dead letters check = %+v, want warn", c)
	}
}

// TestProbe_MasksPasswords checks a probe error never carries a password.
func TestProbe_MasksPasswords(t *testing.T) {
	m := newTestMonitor("replication")
	d := m.probeDB(context.Background(), "chat", nil, func(context.Context) error {
		return errors.New("cannot connect to postgres://cdc:pw-Tr0ub4dor@db:5432/chat")
	})
	if d.Reachable || strings.Contains(d.Error, "pw-Tr0ub4dor") || !strings.Contains(d.Error, "db:5432") {
		t.Errorf("probe error = %q; want the host, not the password", d.Error)
	}
}
