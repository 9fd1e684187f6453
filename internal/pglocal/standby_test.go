package pglocal

import (
	"testing"
	"time"
)

// TestStandby takes a base backup of a primary under writes, checks that
// the standby replays what the primary commits afterwards, then promotes
// it and writes to it.
func TestStandby(t *testing.T) {
	primary := startServer(t, Options{Fast: true})
	dsn := primary.DSN("postgres")
	execSQL(t, dsn, "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 1000)")
	standby, err := StartStandby(t.Context(), primary, "standby_1", Options{Fast: true})
	if err != nil {
		t.Fatalf("StartStandby: %v", err)
	}
	t.Cleanup(func() { _ = standby.Stop() })
	if got := queryString(t, standby.DSN("postgres"), "SELECT pg_is_in_recovery()::text"); got != "true" {
		t.Fatalf("standby in recovery = %s", got)
	}
	execSQL(t, dsn, "INSERT INTO t SELECT generate_series(1001, 2000)")
	deadline := time.Now().Add(30 * time.Second)
	for queryString(t, standby.DSN("postgres"), "SELECT count(*)::text FROM t") != "2000" {
		if time.Now().After(deadline) {
			t.Fatal("the standby did not replay the primary's insert within 30 s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := queryString(t, dsn, "SELECT active::text FROM pg_replication_slots WHERE slot_name = 'standby_1'"); got != "true" {
		t.Errorf("the standby does not stream through its slot (active = %s)", got)
	}
	if err := standby.Promote(t.Context()); err != nil {
		t.Fatal(err)
	}
	execSQL(t, standby.DSN("postgres"), "INSERT INTO t VALUES (2001)")
	if got := queryString(t, standby.DSN("postgres"), "SELECT count(*)::text FROM t"); got != "2001" {
		t.Errorf("rows on the promoted standby = %s, want 2001", got)
	}
}
