package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/Shopify/toxiproxy/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/myusta/cdc/internal/pglocal"
	"github.com/myusta/cdc/internal/pgtest"
)

// chaos is the chaos suite's world: a source and a chat server of their
// own, cdc connected to both through in-process Toxiproxy proxies, a steady
// mixed workload on the source, and a chat-side log of every row version
// written (to prove nothing is applied twice).
type chaos struct {
	t                   *testing.T
	ctx                 context.Context
	p                   *pgtest.Pair
	src, chat           *pglocal.Server
	srcProxy, chatProxy *toxiproxy.Proxy
	env                 map[string]string
	cdc                 *proc
	stopLoad            func()
	rng                 *rand.Rand
	reps, survived      int
}

// scenario is one kind of fault, done reps times (short: in CI; full: make
// chaos), with a convergence check after every repetition.
type scenario struct {
	name        string
	short, full int
	do          func(c *chaos, i int)
}

// TestChaos runs every fault scenario against a running cdc under load.
// After each repetition the workload pauses and chat must equal the source
// row by row with no row version written twice. The scheduled reconciler is
// off, so convergence is the stream's work alone. CHAOS=full (make chaos)
// runs the full counts; the default is the short version CI runs.
func TestChaos(t *testing.T) {
	full := os.Getenv("CHAOS") == "full"
	c := newChaos(t)
	chatDown := 10 * time.Second
	if full {
		chatDown = 2 * time.Minute
	}
	scenarios := []scenario{
		{"kill -9 of cdc", 3, 20, (*chaos).killCDC},
		{"source restart (fast, then immediate)", 2, 6, func(c *chaos, i int) { c.restart(c.src, i) }},
		{"chat restart (fast, then immediate)", 2, 6, func(c *chaos, i int) { c.restart(c.chat, i) }},
		// Immediate restarts lose chat's asynchronous commits that its WAL
		// writer had not written yet: cdc must notice and stream them again.
		{"chat restart (immediate)", 2, 20, func(c *chaos, i int) { c.restart(c.chat, 1) }},
		{"connections reset by peer", 2, 10, func(c *chaos, i int) {
			c.toxic(c.proxyFor(i), "reset_peer", `{"timeout": 0}`, 300*time.Millisecond)
		}},
		{"connections slowed (150 ms ± 100 ms)", 2, 10, func(c *chaos, i int) {
			c.toxic(c.proxyFor(i), "latency", `{"latency": 150, "jitter": 100}`, 2*time.Second)
		}},
		{"connections black-holed (closed after 2 s)", 2, 10, func(c *chaos, i int) {
			c.toxic(c.proxyFor(i), "timeout", `{"timeout": 2000}`, 3*time.Second)
		}},
		{"walsender terminated", 2, 5, (*chaos).terminateWalsender},
		{fmt.Sprintf("chat down for %s", chatDown), 1, 1, func(c *chaos, i int) { c.chatDown(chatDown) }},
		{"poison row in the middle of a batch", 1, 1, (*chaos).poison},
	}
	for _, s := range scenarios {
		n := s.short
		if full {
			n = s.full
		}
		for i := 0; i < n; i++ {
			s.do(c, i)
			c.settle(fmt.Sprintf("%s %d/%d", s.name, i+1, n))
		}
	}
	total, _ := c.p.Applies(t)
	streamed := c.p.ReadSlotStats(t).StreamTxns
	if streamed == 0 {
		t.Error("the source streamed no transaction: chaos did not exercise streamed transactions")
	}
	t.Logf("chaos: %d fault repetitions in %d scenarios run, %d survived (chat == source row by row, no version applied twice; %d row versions applied, %d transactions streamed before their commit); chat lost asynchronous commits %d times since the last kill -9 (streamed again)",
		c.reps, len(scenarios), c.survived, total, streamed, strings.Count(c.cdc.out.String(), "lost batches it had committed asynchronously"))
	if code := c.cdc.stop(t, 40*time.Second); code != 0 {
		t.Fatalf("cdc exit %d after SIGTERM", code)
	}
}

func newChaos(t *testing.T) *chaos {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	c := &chaos{t: t, ctx: ctx, rng: rand.New(rand.NewPCG(11, 17))}
	for _, srv := range []**pglocal.Server{&c.src, &c.chat} {
		s, err := pglocal.Start(ctx, pglocal.Options{Fast: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Stop() })
		*srv = s
	}
	c.p = pgtest.NewBarePair(t, c.src, 5000)
	chat := pgtest.NewBarePair(t, c.chat, 0)
	c.p.ChatURL, c.p.Chat = chat.ChatURL, chat.Chat
	c.p.Migrate(t)
	c.p.TrackApplies(t)
	c.p.StreamLarge(t) // the bulk updates are streamed before their commit
	pgtest.Exec(t, c.p.Chat, `ALTER TABLE users ADD CONSTRAINT no_poison CHECK (first_name <> 'poison')`)

	tp := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(prometheus.NewRegistry()), zerolog.Nop())
	c.srcProxy = startProxy(t, tp, "source", c.src)
	c.chatProxy = startProxy(t, tp, "chat", c.chat)
	c.env = with(c.p.Env(),
		"SOURCE_DATABASE_URL", viaProxy(t, c.p.SourceURL, c.srcProxy),
		"CHAT_DATABASE_URL", viaProxy(t, c.p.ChatURL, c.chatProxy),
		"SYNC_INTERVAL_MINUTES", "60", "FULL_RECONCILE_INTERVAL", "0", // the stream alone must converge
		"BATCH_MAX_ROWS", "200", "STANDBY_STATUS_INTERVAL", "1s", "LOG_LEVEL", "info",
		"RETRY_INITIAL_DELAY", "100", "RETRY_MAX_DELAY", "1000")
	c.cdc = startCDC(t, c.env, "run")
	c.p.WaitEqual(t, 60*time.Second)
	c.startLoad()
	return c
}

func startProxy(t *testing.T, tp *toxiproxy.ApiServer, name string, srv *pglocal.Server) *toxiproxy.Proxy {
	t.Helper()
	px := toxiproxy.NewProxy(tp, name, "127.0.0.1:0", fmt.Sprintf("127.0.0.1:%d", srv.Port()))
	if err := px.Start(); err != nil {
		t.Fatalf("start proxy %s: %v", name, err)
	}
	t.Cleanup(px.Stop)
	return px
}

// viaProxy points dsn at the proxy's listening address.
func viaProxy(t *testing.T, dsn string, px *toxiproxy.Proxy) string {
	t.Helper()
	return withHost(t, dsn, px.Listen)
}

func (c *chaos) proxyFor(i int) *toxiproxy.Proxy {
	if i%2 == 0 {
		return c.srcProxy
	}
	return c.chatProxy
}

// settle pauses the workload, checks that cdc survived and that chat
// converges to the source with no row version written twice, then resumes
// the workload.
func (c *chaos) settle(what string) {
	t := c.t
	t.Helper()
	c.reps++
	c.stopLoad()
	if !c.cdc.running() {
		t.Fatalf("%s: cdc exited (code %d)", what, c.cdc.code)
	}
	c.p.WaitEqual(t, 90*time.Second)
	total, twice := c.p.Applies(t)
	if twice != 0 {
		t.Fatalf("%s: %d row versions were applied twice", what, twice)
	}
	c.survived++
	t.Logf("survived %s (%d row versions applied so far)", what, total)
	c.startLoad()
}

// startLoad starts chaos's workload: 200 single-row changes/s and a
// 300-row update every 150 ms, which the source streams before its commit
// (past StreamLarge's 64 kB).
func (c *chaos) startLoad() { c.stopLoad = load(c.t, c.p, 200, 300) }

func (c *chaos) pause(min, max time.Duration) {
	time.Sleep(min + time.Duration(c.rng.Int64N(int64(max-min))))
}

func (c *chaos) killCDC(int) {
	c.pause(300*time.Millisecond, 2*time.Second)
	c.cdc.kill()
	c.cdc = startCDC(c.t, c.env, "run")
	c.pause(500*time.Millisecond, time.Second)
}

// restart stops srv (fast on even i, immediate on odd i) and starts it
// again a second later.
func (c *chaos) restart(srv *pglocal.Server, i int) {
	c.pause(500*time.Millisecond, time.Second)
	mode := pglocal.FastStop
	if i%2 == 1 {
		mode = pglocal.ImmediateStop
	}
	if err := srv.Halt(mode); err != nil {
		c.t.Fatal(err)
	}
	time.Sleep(time.Second)
	if err := srv.Resume(c.ctx); err != nil {
		c.t.Fatal(err)
	}
	c.p.Source.Reset()
	c.p.Chat.Reset()
	c.pause(time.Second, 2*time.Second)
}

// toxic applies a Toxiproxy toxic of kind to both directions of px for d.
func (c *chaos) toxic(px *toxiproxy.Proxy, kind, attrs string, d time.Duration) {
	c.pause(300*time.Millisecond, time.Second)
	var names []string
	for _, stream := range []string{"upstream", "downstream"} {
		name := kind + "_" + stream
		spec := fmt.Sprintf(`{"name": %q, "type": %q, "stream": %q, "toxicity": 1, "attributes": %s}`, name, kind, stream, attrs)
		if _, err := px.Toxics.AddToxicJson(strings.NewReader(spec)); err != nil {
			c.t.Fatalf("add toxic %s: %v", name, err)
		}
		names = append(names, name)
	}
	time.Sleep(d)
	for _, name := range names {
		if err := px.Toxics.RemoveToxic(c.ctx, name); err != nil {
			c.t.Fatalf("remove toxic %s: %v", name, err)
		}
	}
	c.pause(time.Second, 2*time.Second)
}

func (c *chaos) terminateWalsender(int) {
	c.pause(500*time.Millisecond, 1500*time.Millisecond)
	var n int
	if err := c.p.Source.QueryRow(c.ctx, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE backend_type = 'walsender'").Scan(&n); err != nil {
		c.t.Fatal(err)
	}
	if n != 1 {
		c.t.Fatalf("terminated %d walsenders, want 1", n)
	}
	c.pause(time.Second, 2*time.Second)
}

// chatDown stops the chat server for d under load: cdc must pause its
// writes without exiting, keep the slot, and catch up afterwards.
func (c *chaos) chatDown(d time.Duration) {
	if err := c.chat.Halt(pglocal.FastStop); err != nil {
		c.t.Fatal(err)
	}
	time.Sleep(d)
	if !c.cdc.running() {
		c.t.Fatalf("cdc exited while chat was down (code %d)", c.cdc.code)
	}
	if err := c.chat.Resume(c.ctx); err != nil {
		c.t.Fatal(err)
	}
	c.p.Chat.Reset()
	c.cdc.waitOutput(c.t, "chat database writable again; resuming", 60*time.Second)
}

// poison writes a 50-row transaction whose 25th row the chat database
// refuses: the 49 others commit, the 25th is a dead letter; once the source
// row changes to something chat accepts, the dead letter is resolved.
func (c *chaos) poison(int) {
	t := c.t
	const id = "00000000-0000-0000-0000-0000000000ff"
	pgtest.Exec(t, c.p.Source, `INSERT INTO users (id, first_name, updated_at)
SELECT CASE WHEN g = 25 THEN $1::uuid ELSE gen_random_uuid() END, CASE WHEN g = 25 THEN 'poison' ELSE 'batch mate ' || g END, clock_timestamp()
FROM generate_series(1, 50) g`, id)
	deadline := time.Now().Add(30 * time.Second)
	for {
		var open, mates int
		err := c.p.Chat.QueryRow(c.ctx, `SELECT (SELECT count(*) FROM sync_errors WHERE user_id = $1 AND NOT resolved AND error_type = 'check_violation'),
       (SELECT count(*) FROM users WHERE first_name LIKE 'batch mate %')`, id).Scan(&open, &mates)
		if err != nil {
			t.Fatal(err)
		}
		if open == 1 && mates == 49 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("poison row: %d open dead letters, %d of 49 batch mates in chat", open, mates)
		}
		time.Sleep(50 * time.Millisecond)
	}
	pgtest.Exec(t, c.p.Source, `UPDATE users SET first_name = 'cured', updated_at = clock_timestamp() WHERE id = $1`, id)
	deadline = time.Now().Add(30 * time.Second)
	for {
		var resolved bool
		if err := c.p.Chat.QueryRow(c.ctx, "SELECT bool_and(resolved) FROM sync_errors WHERE user_id = $1", id).Scan(&resolved); err != nil {
			t.Fatal(err)
		}
		if resolved {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the poison row's dead letter was not resolved by the later change")
		}
		time.Sleep(50 * time.Millisecond)
	}
}
