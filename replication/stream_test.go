package replication_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/myusta/cdc/change"
	"github.com/myusta/cdc/internal/pgtest"
	"github.com/myusta/cdc/internal/retry"
	"github.com/myusta/cdc/migrations"
	"github.com/myusta/cdc/replication"
	"github.com/myusta/cdc/sink"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// testLog writes log lines to the test log.
type testLog struct{ t testing.TB }

func (w testLog) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func logger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(testLog{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

var fastRetry = retry.Policy{Initial: 50 * time.Millisecond, Max: 500 * time.Millisecond, Multiplier: 2, Loud: 10}

// running is a stream running in the background.
type running struct {
	stream  *replication.Stream
	sink    *sink.Sink
	cancel  context.CancelFunc
	done    chan error
	stopped bool
}

// stop shuts the stream down as SIGTERM would and returns Run's error.
func (r *running) stop(t testing.TB) {
	t.Helper()
	if r.stopped {
		return
	}
	r.stopped = true
	r.cancel()
	select {
	case err := <-r.done:
		if err != nil {
			t.Errorf("stream run: %v", err)
		}
	case <-time.After(40 * time.Second):
		buf := make([]byte, 1<<20)
		t.Fatalf("stream did not stop within 40s:\n%s", buf[:runtime.Stack(buf, true)])
	}
	r.sink.Close()
}

// start runs a stream for p, with opts adjusted by tweak.
func start(t *testing.T, p *pgtest.Pair, tweak func(*replication.Options)) *running {
	t.Helper()
	return startWith(t, p, nil, tweak)
}

// startWith is start with the sink wrapped by wrap (nil = the sink itself).
func startWith(t *testing.T, p *pgtest.Pair, wrap func(*sink.Sink) change.Sink, tweak func(*replication.Options)) *running {
	t.Helper()
	ctx := context.Background()
	cfg := p.Config(t)
	src := replication.Source{Spec: migrations.SpecFor(cfg).Source(), Publication: cfg.PublicationName, Secret: cfg.SecretColumns}
	if _, err := replication.Preflight(ctx, p.Source, src); err != nil {
		t.Fatalf("preflight: %v", err)
	}
	srcTable, chatTable := p.Tables(t, cfg)
	// Chat commits as cdc run makes them: asynchronously by default.
	sk := sink.New(p.Chat, chatTable, sink.Options{Slot: p.Slot, Retry: fastRetry, Logger: logger(t), AsyncCommit: cfg.AsyncCommit})
	opts := replication.Options{
		SourceURL: p.SourceURL, Slot: p.Slot, Publication: cfg.PublicationName, Table: srcTable,
		BatchMaxRows: cfg.BatchMaxRows, StatusInterval: time.Second, Retry: fastRetry, Logger: logger(t),
	}
	if tweak != nil {
		tweak(&opts)
	}
	var a change.Sink = sk
	if wrap != nil {
		a = wrap(sk)
	}
	st := replication.New(p.Source, a, opts)
	ctx, cancel := context.WithCancel(ctx)
	r := &running{stream: st, sink: sk, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- st.Run(ctx) }()
	t.Cleanup(func() { r.stop(t) })
	return r
}

func TestStream_CopyThenStreamEveryKindOfChange(t *testing.T) {
	p := pgtest.NewPair(t, 10_000)
	r := start(t, p, nil)
	p.WaitEqual(t, 30*time.Second)

	// Inserts, updates and deletes with NULLs and unicode.
	pgtest.Exec(t, p.Source, `INSERT INTO users (first_name, last_name, email, phone, role, status, updated_at)
VALUES ('Zoë 🚀', NULL, 'zoe@example.com', NULL, 'usta', 'active', now()),
       ('Ĳsbrand', 'Ñandú — 日本語', NULL, '+90 555', NULL, NULL, now())`)
	pgtest.Exec(t, p.Source, `UPDATE users SET last_name = NULL, status = 'banned', updated_at = now() WHERE email LIKE 'user1%'`)
	pgtest.Exec(t, p.Source, `DELETE FROM users WHERE email LIKE 'user2%'`)
	p.WaitEqual(t, 30*time.Second)

	// A 100 kB value is TOASTed; an update of another column sends it as
	// "unchanged" and it must survive, alone and after an update in the
	// same transaction.
	big := strings.Repeat("0123456789abcdefghijklmnopqrstuvwxyz", 3000)
	pgtest.Exec(t, p.Source, `INSERT INTO users (id, first_name, profile_picture, updated_at) VALUES
('00000000-0000-0000-0000-00000000b001', 'Big', $1 || md5(random()::text), now()),
('00000000-0000-0000-0000-00000000b002', 'Big2', $1 || md5(random()::text), now())`, big)
	p.WaitEqual(t, 30*time.Second)
	pgtest.Exec(t, p.Source, `UPDATE users SET status = 'toast-kept', updated_at = now() WHERE first_name = 'Big'`)
	tx, err := p.Source.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(context.Background(), `UPDATE users SET status = 'a', updated_at = now() WHERE first_name = 'Big2'`); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(context.Background(), `UPDATE users SET status = 'b', updated_at = now() WHERE first_name = 'Big2'`); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(context.Background()); err != nil {
		t.Fatal(err)
	}
	p.WaitEqual(t, 30*time.Second)
	var n int
	if err := p.Chat.QueryRow(context.Background(), `SELECT count(*) FROM users WHERE length(profile_picture) > 100000 AND status IN ('toast-kept', 'b')`).Scan(&n); err != nil || n != 2 {
		t.Fatalf("TOASTed values after updates of other columns: %d rows kept (want 2), err %v", n, err)
	}

	// A column added on the source does not stop the stream.
	pgtest.Exec(t, p.Source, `ALTER TABLE users ADD COLUMN nickname text`)
	pgtest.Exec(t, p.Source, `UPDATE users SET nickname = 'nick', status = 'after-alter', updated_at = now() WHERE email LIKE 'user3%'`)
	pgtest.Exec(t, p.Source, `INSERT INTO users (first_name, nickname, updated_at) VALUES ('Post', 'alter', now())`)
	p.WaitEqual(t, 30*time.Second)

	// TRUNCATE is mirrored, and the stream goes on after it.
	pgtest.Exec(t, p.Source, `TRUNCATE users`)
	p.WaitEqual(t, 30*time.Second)
	pgtest.Exec(t, p.Source, `INSERT INTO users (first_name, updated_at) SELECT 'after-truncate ' || g, now() FROM generate_series(1, 100) g`)
	p.WaitEqual(t, 30*time.Second)

	r.stop(t)
	if got := r.stream.Stats.Truncates.Load(); got != 1 {
		t.Errorf("truncates counted: %d, want 1", got)
	}
	var confirmed string
	if err := p.Source.QueryRow(context.Background(), "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", p.Slot).Scan(&confirmed); err != nil {
		t.Fatal(err)
	}
	lsn, _ := pglogrepl.ParseLSN(confirmed)
	if applied := pglogrepl.LSN(r.stream.Stats.Applied.Load()); lsn < applied {
		t.Errorf("after shutdown the slot confirms %s, before the applied %s", lsn, applied)
	}
}

// TestStream_FirstCopyInPartsUnderWrites: the first copy reads the table
// in three ranges of pages at once, under the slot's snapshot, while the
// source takes inserts, updates (which move rows to other pages) and
// deletes; streaming from the slot's consistent point then makes chat
// equal to the source, row by row.
func TestStream_FirstCopyInPartsUnderWrites(t *testing.T) {
	defer replication.SetMinPartPages(50)()
	p := pgtest.NewPair(t, 20_000)
	ctx, stopWrites := context.WithCancel(context.Background())
	wrote := make(chan int)
	go func() {
		n := 0
		for ctx.Err() == nil {
			n++
			g := strconv.Itoa(n%20_000 + 1)
			for _, q := range []string{
				`UPDATE users SET status = 'during-copy', last_name = md5(random()::text), updated_at = now() WHERE split_part(split_part(email, '-', 1), 'user', 2) = '` + g + `'`,
				`INSERT INTO users (first_name, updated_at) VALUES ('new during copy', now())`,
				`DELETE FROM users WHERE split_part(split_part(email, '-', 1), 'user', 2) = '` + strconv.Itoa((n*7)%20_000+1) + `'`,
			} {
				_, _ = p.Source.Exec(ctx, q)
			}
		}
		wrote <- n
	}()
	var logs pgtest.Buffer
	time.Sleep(200 * time.Millisecond)
	start(t, p, func(o *replication.Options) {
		o.CopyWorkers = 3
		o.Logger = slog.New(slog.NewJSONHandler(&logs, nil))
	})
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(logs.String(), "first copy done") && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond) // writes after the copy, streamed
	stopWrites()
	if n := <-wrote; n < 10 {
		t.Fatalf("only %d rounds of writes ran", n)
	}
	if !strings.Contains(logs.String(), `"parts":3`) {
		t.Fatalf("the first copy did not run in 3 parts:\n%s", logs.String())
	}
	p.WaitEqual(t, 30*time.Second)
}

// TestStream_WritesAtOnceAndBatchesWhatArrivesMeanwhile: with a
// BATCH_MAX_WAIT of a second, a lone change that finds the writer idle is
// written at once (a trickle does not linger), and single-row transactions
// committed back to back share chat transactions: the first is written at
// once, the ones that arrive while it is written go together.
func TestStream_WritesAtOnceAndBatchesWhatArrivesMeanwhile(t *testing.T) {
	p := pgtest.NewPair(t, 1000)
	r := start(t, p, func(o *replication.Options) { o.BatchMaxWait = time.Second })
	p.WaitEqual(t, 30*time.Second)
	update := func(i int) {
		pgtest.Exec(t, p.Source, `UPDATE users SET status = 'linger', updated_at = now() WHERE `+
			`split_part(split_part(email, '-', 1), 'user', 2) = $1`, strconv.Itoa(i))
	}
	began := time.Now()
	update(100)
	p.WaitEqual(t, 30*time.Second)
	if took := time.Since(began); took >= 900*time.Millisecond {
		t.Fatalf("a lone change took %s to reach chat with BATCH_MAX_WAIT=1s: it lingered although the writer was idle", took.Round(time.Millisecond))
	}
	before := r.sink.Stats.Batches.Load()
	began = time.Now()
	for i := 1; i <= 20; i++ {
		update(i)
	}
	took := time.Since(began)
	p.WaitEqual(t, 30*time.Second)
	batches := r.sink.Stats.Batches.Load() - before
	if batches >= 20 || took < 500*time.Millisecond && batches > 10 {
		t.Fatalf("20 single-row transactions committed within %s were written in %d chat transactions; want them to share", took.Round(time.Millisecond), batches)
	}
}

// probeCounter counts the durability probes the stream asks the sink for.
type probeCounter struct {
	*sink.Sink
	probes atomic.Int32
}

func (c *probeCounter) Durable(ctx context.Context, probe bool) (change.Checkpoint, error) {
	if probe {
		c.probes.Add(1)
	}
	return c.Sink.Durable(ctx, probe)
}

// TestStream_TrickleConfirmsWithoutProbes: with asynchronous chat commits,
// a steady trickle of writes moves the slot's confirmed position through
// the flush position each write reads, without probes of chat of its own
// (they cost a trickle of 10 changes/s a chat round trip per 10 changes);
// once the trickle stops, a probe confirms the last write.
func TestStream_TrickleConfirmsWithoutProbes(t *testing.T) {
	p := pgtest.NewPair(t, 100)
	if !p.Config(t).AsyncCommit {
		t.Fatal("the default configuration no longer commits asynchronously; this test is about that path")
	}
	var pc *probeCounter
	start := func(s *sink.Sink) change.Sink { pc = &probeCounter{Sink: s}; return pc }
	startWith(t, p, start, nil)
	p.WaitEqual(t, 30*time.Second)
	confirmed := func() pglogrepl.LSN {
		var s string
		if err := p.Source.QueryRow(context.Background(), "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", p.Slot).Scan(&s); err != nil {
			t.Fatal(err)
		}
		lsn, _ := pglogrepl.ParseLSN(s)
		return lsn
	}
	before := pc.probes.Load()
	first := confirmed()
	for i := range 50 { // 5 s at 10 changes/s
		pgtest.Exec(t, p.Source, "UPDATE users SET status = $1, updated_at = now() WHERE email = (SELECT min(email) FROM users)", fmt.Sprint("trickle ", i))
		time.Sleep(100 * time.Millisecond)
	}
	probes := pc.probes.Load() - before
	mid := confirmed()
	var end string
	if err := p.Source.QueryRow(context.Background(), "SELECT pg_current_wal_lsn()::text").Scan(&end); err != nil {
		t.Fatal(err)
	}
	last, _ := pglogrepl.ParseLSN(end)
	p.WaitEqual(t, 30*time.Second)
	if probes > 1 {
		t.Errorf("%d durability probes during a 5-s trickle of 10 writes/s; the writes read chat's flushed WAL themselves", probes)
	}
	if mid <= first {
		t.Errorf("the slot confirmed nothing during the trickle (%s before, %s after)", first, mid)
	}
	deadline := time.Now().Add(15 * time.Second)
	for confirmed() < last {
		if time.Now().After(deadline) {
			t.Fatalf("the slot confirms %s 15 s after the trickle ended, want at least %s (the last write, once chat flushed it)", confirmed(), last)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestStream_IdleRestartReportsTheCheckpoint: a stream started on a stored
// checkpoint with nothing new to apply reports that checkpoint as applied,
// not 0.
func TestStream_IdleRestartReportsTheCheckpoint(t *testing.T) {
	p := pgtest.NewPair(t, 100)
	r := start(t, p, nil)
	p.WaitEqual(t, 30*time.Second)
	pgtest.Exec(t, p.Source, "UPDATE users SET status = 'before restart', updated_at = now()")
	p.WaitEqual(t, 30*time.Second)
	r.stop(t)
	r = start(t, p, nil)
	deadline := time.Now().Add(30 * time.Second)
	for !r.stream.Stats.Streaming.Load() {
		if time.Now().After(deadline) {
			t.Fatal("the restarted stream did not stream")
		}
		time.Sleep(20 * time.Millisecond)
	}
	cp, ok, err := r.sink.Checkpoint(context.Background())
	if err != nil || !ok {
		t.Fatalf("checkpoint: %v %v", ok, err)
	}
	if got := pglogrepl.LSN(r.stream.Stats.Applied.Load()); got != cp.LSN || got == 0 {
		t.Errorf("applied %s after an idle restart, want the checkpoint %s", got, cp.LSN)
	}
}

// byteCounter records the largest batch, in bytes of values, the stream
// hands the sink.
type byteCounter struct {
	*sink.Sink
	largest, batches atomic.Int64
}

func (c *byteCounter) Apply(ctx context.Context, b *change.Batch) error {
	c.batches.Add(1)
	if n := int64(b.Size()); n > c.largest.Load() {
		c.largest.Store(n)
	}
	return c.Sink.Apply(ctx, b)
}

// TestStream_BatchesBoundedByBytes: wide rows fill a batch by BATCH_MAX_MB
// before BATCH_MAX_ROWS, so a transaction of 2,000 rows of ~1 kB is held
// 64 kB at a time (one chat transaction still: chat's readers see it
// whole, which cmd/cdc's TestAtomic_LargeTransactionIsWholeInChat covers).
func TestStream_BatchesBoundedByBytes(t *testing.T) {
	p := pgtest.NewPair(t, 2000)
	const bound = 64 << 10
	var counter *byteCounter
	startWith(t, p, func(s *sink.Sink) change.Sink {
		counter = &byteCounter{Sink: s}
		return counter
	}, func(o *replication.Options) { o.BatchMaxRows, o.BatchMaxBytes = 10000, bound })
	p.WaitEqual(t, 30*time.Second)
	before := counter.batches.Load()
	pgtest.Exec(t, p.Source, `UPDATE users SET profile_picture = repeat(md5(id::text), 32), updated_at = now()`)
	p.WaitEqual(t, 30*time.Second)
	// A batch is full once it reaches the bound: at most one row past it.
	if largest := counter.largest.Load(); largest > bound+2<<10 {
		t.Fatalf("a batch held %d bytes of values, bound %d", largest, bound)
	}
	if n := counter.batches.Load() - before; n < 2000*1024/bound {
		t.Fatalf("2,000 rows of ~1 kB written in %d batches; want at least %d of 64 kB", n, 2000*1024/bound)
	}
}
