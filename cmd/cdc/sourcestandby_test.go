package main

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/myusta/cdc/internal/db"
	"github.com/myusta/cdc/internal/health"
	"github.com/myusta/cdc/internal/pglocal"
	"github.com/myusta/cdc/internal/pgtest"
)

// standbySource is a source primary with a hot standby of it, the pair's
// source database on both.
type standbySource struct {
	p                *pgtest.Pair
	primary, standby *pglocal.Server
	standbyURL       string
}

func newStandbySource(t *testing.T, major int) *standbySource {
	t.Helper()
	ctx := t.Context()
	bin := pgtest.BinFor(t, major)
	primary, err := pglocal.Start(ctx, pglocal.Options{Fast: true, Bin: bin, Settings: map[string]string{"wal_sender_timeout": "10s"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = primary.Stop() })
	p := pgtest.NewSplitPair(t, primary, pgtest.ChatServer(t), 2000)
	standby, err := pglocal.StartStandby(ctx, primary, "standby_1", pglocal.Options{Fast: true, Settings: map[string]string{"hot_standby_feedback": "on"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = standby.Stop() })
	standbyURL := withHost(t, p.SourceURL, "127.0.0.1:"+strconv.Itoa(standby.Port()))
	return &standbySource{p: p, primary: primary, standby: standby, standbyURL: standbyURL}
}

// TestSourceStandby streams from a hot standby (16+) under load on the
// primary: the slot and the first copy are on the standby, the
// publication on the primary. Then the primary dies and the standby is
// promoted: cdc continues from the slot, which is the promoted server's
// own — no new slot, no copy, nothing applied twice — and chat ends equal
// to the new primary.
func TestSourceStandby(t *testing.T) {
	for _, major := range []int{16, 18} {
		t.Run(fmt.Sprint(major), func(t *testing.T) {
			t.Parallel()
			testSourceStandby(t, major)
		})
	}
}

func testSourceStandby(t *testing.T, major int) {
	ctx := t.Context()
	s := newStandbySource(t, major)
	p := s.p
	p.TrackApplies(t)
	env := with(p.Env(), "SOURCE_DATABASE_URL", s.standbyURL, "LOG_LEVEL", "info", "BATCH_MAX_ROWS", "100")
	if code, out := runCDC(t, env, "migrate"); code != 2 || !strings.Contains(out, "SOURCE_PRIMARY_URL: is required: SOURCE_DATABASE_URL names a hot standby") {
		t.Fatalf("migrate on a standby without SOURCE_PRIMARY_URL: exit %d, want 2 naming it:\n%s", code, out)
	}
	env["SOURCE_PRIMARY_URL"] = p.SourceURL
	if code, out := runCDC(t, env, "migrate"); code != 0 || !strings.Contains(out, "source: publication") {
		t.Fatalf("migrate through SOURCE_PRIMARY_URL: exit %d:\n%s", code, out)
	}
	stopLoad := load(t, p, 300, 100)
	c := startCDC(t, env, "run")
	c.waitOutput(t, "streaming changes", 60*time.Second)
	standbyPool, err := db.NewPool(ctx, s.standbyURL, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer standbyPool.Close()
	var onStandby, onPrimary int
	if err := standbyPool.QueryRow(ctx, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", p.Slot).Scan(&onStandby); err != nil {
		t.Fatal(err)
	}
	if err := p.Source.QueryRow(ctx, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1", p.Slot).Scan(&onPrimary); err != nil {
		t.Fatal(err)
	}
	if onStandby != 1 || onPrimary != 0 {
		t.Fatalf("slot %s: %d on the standby, %d on the primary; want it on the standby only", p.Slot, onStandby, onPrimary)
	}
	waitHealth(t, "http://"+httpAddr(t, c), 30*time.Second, "the slot check saying the slot is the standby's", func(st *health.Stats, _ int) bool {
		return st.Slot != nil && strings.HasPrefix(st.Slot.Promotion, "the slot is on the standby cdc reads")
	})
	time.Sleep(3 * time.Second)
	stopLoad()
	p.WaitEqual(t, 60*time.Second)
	before := len(c.out.String())

	stopLoad = load(t, p, 300, 0)
	time.Sleep(time.Second)
	if err := s.primary.Halt(pglocal.KillStop); err != nil {
		t.Fatal(err)
	}
	stopLoad()
	if err := s.standby.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	p.Source.Close()
	if p.Source, err = db.NewPool(ctx, s.standbyURL, 8); err != nil {
		t.Fatal(err)
	}
	stopLoad = load(t, p, 300, 0)
	time.Sleep(2 * time.Second)
	stopLoad()
	p.WaitEqual(t, 90*time.Second)
	after := c.out.String()[before:]
	if code := c.stop(t, 40*time.Second); code != 0 {
		t.Fatalf("exit %d:\n%s", code, c.out.String())
	}
	// The walsender on the standby usually carries on through the
	// promotion; if the session broke, the next one says so.
	if strings.Contains(after, "created replication slot") || strings.Contains(after, "recreating the slot") {
		t.Fatalf("cdc did not continue from the promoted standby's slot:\n%s", tail(after, 30))
	}
	if _, twice := p.Applies(t); twice != 0 {
		t.Fatalf("%d row versions applied twice across the promotion", twice)
	}
	t.Logf("PostgreSQL %d: streamed from the standby, promoted it, continued from its slot (reconnected: %t); chat equals the new primary",
		major, strings.Contains(after, "continuing from its own slot"))
}

// TestSourceStandby_Refused: a standby older than 16 cannot decode, and a
// standby runs no notify trigger: both exit 2 with the reason.
func TestSourceStandby_Refused(t *testing.T) {
	s := newStandbySource(t, 15)
	env := with(s.p.Env(), "SOURCE_DATABASE_URL", s.standbyURL, "SOURCE_PRIMARY_URL", s.p.SourceURL)
	for _, tc := range []struct {
		mode, want string
	}{{"replication", "logical decoding on a standby needs 16 or later"}, {"notify", "notify mode needs the primary"}} {
		for _, cmd := range []string{"migrate", "run"} {
			if code, out := runCDC(t, with(env, "SYNC_MODE", tc.mode), cmd); code != 2 || !strings.Contains(out, tc.want) {
				t.Fatalf("%s mode, cdc %s from a 15 standby: exit %d, want 2 saying %q:\n%s", tc.mode, cmd, code, tc.want, out)
			}
		}
	}
}
