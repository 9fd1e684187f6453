package sink

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/myusta/cdc/change"
	"github.com/myusta/cdc/internal/retry"
	"github.com/myusta/cdc/internal/schema"
)

// Options configure a Sink.
type Options struct {
	Slot   string       // key of this stream's row in cdc_checkpoint
	Retry  retry.Policy // for transient chat failures; the sink never gives up on those
	Logger *slog.Logger
	// OnBatch, when set, is called after each batch Apply commits (for
	// metrics). It runs on the writer's goroutine and must not block.
	OnBatch func(change.BatchInfo)
	// AsyncCommit commits Apply's batches with synchronous_commit=off;
	// Durable then reports only what chat has flushed (see durable.go).
	// Only for a source that confirms through Durable (the stream).
	AsyncCommit bool
}

// Stats counts what the sink has written since it started.
type Stats struct {
	Batches     atomic.Int64
	Upserts     atomic.Int64
	Deletes     atomic.Int64
	Truncates   atomic.Int64
	DeadLetters atomic.Int64
	Resolved    atomic.Int64  // ids whose dead letters a later write resolved
	LSN         atomic.Uint64 // last committed checkpoint LSN
	// Failures counts writes (batches, repairs) that failed at least once;
	// a write retried many times counts once.
	Failures atomic.Int64
	Failing  atomic.Int64 // consecutive failed attempts of the write in progress; 0 after a success
	// FailingSince is the unix ns of the current streak's first failure
	// (0 when healthy). While failing, the sink backs off (the circuit is
	// open) and the source keeps the changes.
	FailingSince atomic.Int64
}

// Sink is the single writer of the chat table. It holds one connection from
// the pool, with its statements prepared, and serializes every write.
type Sink struct {
	pool  *pgxpool.Pool
	table *schema.Table
	opts  Options
	log   *slog.Logger
	sql   statementSQL

	mu          sync.Mutex // one writer at a time
	conn        *pgxpool.Conn
	stmts       map[string]*pgconn.StatementDescription
	enc         encoder
	open        openErrors    // ids with unresolved dead letters
	resolving   []*resolution // what the transaction being written resolves
	warnedAsync bool          // synchronous_commit=off was reported
	dur         durability    // which committed checkpoints are on disk
	// tx is the chat transaction left open on the writer connection for a
	// source transaction larger than one batch (see Batch.Open).
	tx struct {
		open bool
		done chan struct{} // closed when it commits or is lost
	}

	// Stats is updated after every commit.
	Stats Stats
}

// New returns a sink writing table (the chat side) through pool.
func New(pool *pgxpool.Pool, table *schema.Table, opts Options) *Sink {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Sink{
		pool:  pool,
		table: table,
		opts:  opts,
		log:   log.With("component", "sink"),
		sql:   buildSQL(table, opts.Slot, opts.AsyncCommit),
	}
}

// Table is the chat table the sink writes.
func (s *Sink) Table() *schema.Table { return s.table }

// Close returns the writer connection to the pool; a chat transaction left
// open is rolled back.
func (s *Sink) Close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.releaseConn()
	s.closeTx()
}

// TxLostError reports that the chat transaction holding the earlier
// batches of an unfinished source transaction is gone (rolled back with a
// lost connection): none of the transaction is in chat, and it must be
// applied again from its start (the stream resumes from its checkpoint).
// No retry of the batch alone can fix that, so it is not transient.
type TxLostError struct{ cause string }

func (e *TxLostError) Error() string {
	return "the chat transaction of an unfinished source transaction was lost (" + e.cause + "); it is applied again from its start"
}

// Discard rolls back the chat transaction left open for a source
// transaction that did not finish arriving (the stream lost its
// connection): the stream applies that transaction again from its start.
func (s *Sink) Discard() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.tx.open {
		s.log.Info("rolling back the chat transaction of an unfinished source transaction; it is applied again from its start")
		s.releaseConn()
		s.closeTx()
	}
}

// closeTx notes that no chat transaction is open any more.
func (s *Sink) closeTx() {
	if s.tx.open {
		s.tx.open = false
		close(s.tx.done)
	}
}

// waitIdle waits, with s.mu held, until no chat transaction is left open
// for a source transaction: repairs, like every other write, come after
// it and never inside it.
func (s *Sink) waitIdle(ctx context.Context) error {
	for s.tx.open {
		done := s.tx.done
		s.mu.Unlock()
		select {
		case <-done:
			s.mu.Lock()
		case <-ctx.Done():
			s.mu.Lock()
			return ctx.Err()
		}
	}
	return nil
}

// Apply writes b and its checkpoint in one chat transaction, or, for a
// source transaction larger than one batch, into the chat transaction its
// first batch opened, which the last one commits (see Batch.Open).
// Transient failures are retried with backoff for as long as ctx lives,
// except within an open transaction, which a failure loses (TxLostError).
// A change the chat database refuses is recorded in sync_errors while the
// rest of the batch commits. Apply returns nil once the batch is written:
// durable, unless b is Open.
func (s *Sink) Apply(ctx context.Context, b *change.Batch) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	start := time.Now()
	attempt, dead := 0, 0
	continuing := s.tx.open // earlier batches wait in the open transaction
	err := retry.Do(ctx, s.opts.Retry, s.log, "apply batch", s.counted(func(ctx context.Context) error {
		attempt++
		if !continuing {
			s.begin()
		}
		conn, err := s.writer(ctx)
		if err != nil {
			return s.failed(continuing, err)
		}
		if attempt > 1 && b.Checkpoint != (change.Checkpoint{}) {
			// A connection lost during COMMIT leaves its outcome unknown: the
			// stored checkpoint tells whether that attempt committed.
			cp, _, err := readCheckpoint(ctx, conn.Conn(), s.opts.Slot)
			if err != nil {
				s.dropBroken()
				return err
			}
			if cp == b.Checkpoint {
				s.log.Info("batch committed before the connection was lost", "lsn", cp.LSN)
				return nil
			}
		}
		if dead, err = s.write(ctx, conn.Conn().PgConn(), b); err != nil {
			return s.failed(continuing, err)
		}
		s.Stats.DeadLetters.Add(int64(dead))
		return nil
	}))
	if err != nil {
		return fmt.Errorf("apply batch: %w", err)
	}
	if !b.Open {
		s.committed()
		if b.Checkpoint != (change.Checkpoint{}) {
			s.dur.committed(b.Checkpoint, !s.opts.AsyncCommit)
		}
	}
	info := s.count(b)
	if s.opts.OnBatch != nil {
		info.DeadLetters, info.Took = dead, time.Since(start)
		if !b.FirstCommit.IsZero() {
			info.Latency = time.Since(b.FirstCommit)
		}
		s.opts.OnBatch(info)
	}
	if s.log.Enabled(ctx, slog.LevelDebug) {
		s.log.Debug("batch applied", "rows", len(b.Changes()), "received", b.Received, "lsn", b.Checkpoint.LSN,
			"apply_ms", time.Since(start).Milliseconds(), "age_ms", time.Since(b.Started).Milliseconds(),
			"receive_delay_ms", b.ReceiveDelay.Milliseconds(), "send_delay_ms", b.SendDelay.Milliseconds())
	}
	return nil
}

// count adds the committed batch b to Stats and describes it.
func (s *Sink) count(b *change.Batch) change.BatchInfo {
	info := change.BatchInfo{Received: b.Received, Truncate: b.Truncates()}
	for i := range b.Changes() {
		if b.Changes()[i].Op == change.OpDelete {
			info.Deletes++
		} else {
			info.Upserts++
		}
	}
	s.Stats.Batches.Add(1)
	if b.Truncates() {
		s.Stats.Truncates.Add(1)
	}
	s.Stats.Upserts.Add(int64(info.Upserts))
	s.Stats.Deletes.Add(int64(info.Deletes))
	if b.Checkpoint.LSN != 0 {
		s.Stats.LSN.Store(uint64(b.Checkpoint.LSN))
	}
	return info
}

// counted wraps one write attempt so Stats show failures as they happen,
// not only once the retries end.
func (s *Sink) counted(op func(ctx context.Context) error) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		err := op(ctx)
		switch {
		case err == nil:
			if n := s.Stats.Failing.Swap(0); n > 0 {
				since := time.Unix(0, s.Stats.FailingSince.Swap(0))
				s.log.Info("chat database writable again; resuming", "failed_attempts", n, "paused_for", time.Since(since).Round(time.Millisecond).String())
			}
		case ctx.Err() == nil:
			if s.Stats.Failing.Add(1) == 1 {
				s.Stats.Failures.Add(1)
				s.Stats.FailingSince.Store(time.Now().UnixNano())
				if retry.Transient(err) {
					s.log.Warn("chat database write failed; pausing writes and retrying with backoff (nothing is lost: the source keeps the changes until they are applied)", "err", err)
				}
			}
		}
		return err
	}
}

// Checkpoint reads this stream's stored position; ok is false when none is
// stored (the first copy has not completed).
func (s *Sink) Checkpoint(ctx context.Context) (cp change.Checkpoint, ok bool, err error) {
	cp, ok, err = readCheckpoint(ctx, s.pool, s.opts.Slot)
	if err != nil {
		return cp, ok, fmt.Errorf("read checkpoint: %w", err)
	}
	// What the stream resumes from: visible in chat, on disk unless it
	// was committed asynchronously.
	s.dur.known(cp, !s.opts.AsyncCommit)
	return cp, ok, nil
}

// ForgetCheckpoint deletes the stored position, e.g. after the slot was lost.
func (s *Sink) ForgetCheckpoint(ctx context.Context) error {
	_, err := s.pool.Exec(ctx, "DELETE FROM cdc_checkpoint WHERE slot_name = $1", s.opts.Slot)
	if err != nil {
		return fmt.Errorf("forget checkpoint: %w", err)
	}
	return nil
}

type rowQuerier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

func readCheckpoint(ctx context.Context, q rowQuerier, slot string) (cp change.Checkpoint, ok bool, err error) {
	err = q.QueryRow(ctx, `SELECT lsn::text, COALESCE(partial_xact_lsn, '0/0')::text, partial_changes
FROM cdc_checkpoint WHERE slot_name = $1`, slot).Scan(&cp.LSN, &cp.PartialXact, &cp.PartialChanges)
	if errors.Is(err, pgx.ErrNoRows) {
		return change.Checkpoint{}, false, nil
	}
	return cp, err == nil, err
}

// writer returns the held writer connection, acquiring it and preparing its
// statements when needed.
func (s *Sink) writer(ctx context.Context) (*pgxpool.Conn, error) {
	if s.conn != nil {
		return s.conn, nil
	}
	c, err := s.pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("connect to chat database: %w", err)
	}
	if err := s.durableCommits(ctx, c.Conn().PgConn()); err != nil {
		c.Release()
		return nil, err
	}
	if err := s.settleOnConnect(ctx, c.Conn()); err != nil {
		c.Release()
		return nil, err
	}
	if err := execSimple(ctx, c.Conn().PgConn(), s.sql.createStage); err != nil {
		c.Release()
		return nil, checkError("create staging table", err)
	}
	stmts := make(map[string]*pgconn.StatementDescription, 4)
	for name, sql := range s.sql.prepared() {
		// A pooled connection may hold these names from an earlier sink,
		// perhaps for another table layout: replace them.
		pc := c.Conn().PgConn()
		if err := pc.Deallocate(ctx, name); err != nil {
			c.Release()
			return nil, fmt.Errorf("deallocate %s: %w", name, err)
		}
		sd, err := pc.Prepare(ctx, name, sql.text, sql.oids)
		if err != nil {
			c.Release()
			return nil, checkError("prepare "+name, err)
		}
		stmts[name] = sd
	}
	if !s.open.loaded {
		if err := s.loadOpenErrors(ctx, c.Conn().PgConn()); err != nil {
			c.Release()
			return nil, err
		}
	}
	s.conn, s.stmts = c, stmts
	return c, nil
}

// durableCommits makes the writer's commits durable before they return:
// the stream confirms a position to the slot once its chat transaction has
// committed, so with synchronous_commit=off a crash of the chat server
// would lose changes the source has already released. Other values (on,
// local, remote_write, remote_apply) are kept.
func (s *Sink) durableCommits(ctx context.Context, pc *pgconn.PgConn) error {
	res, err := pc.Exec(ctx, "SELECT current_setting('synchronous_commit'), set_config('synchronous_commit', 'on', false) WHERE current_setting('synchronous_commit') = 'off'").ReadAll()
	if err != nil {
		return fmt.Errorf("set synchronous_commit: %w", err)
	}
	if len(res) == 1 && len(res[0].Rows) == 1 && !s.warnedAsync {
		s.warnedAsync = true
		s.log.Info("the chat database has synchronous_commit=off; cdc's own writes use on, because it releases changes from the source only once they are durable in chat")
	}
	return nil
}

// failed cleans up after a failed write attempt: a connection that cannot
// go on is dropped, and with it an open chat transaction, which is fatal
// to the batch when earlier batches were in it (continuing).
func (s *Sink) failed(continuing bool, err error) error {
	s.dropBroken()
	if s.conn == nil && s.tx.open {
		s.closeTx()
	}
	if continuing {
		s.releaseConn()
		s.closeTx()
		s.resolving = nil
		return &TxLostError{cause: err.Error()}
	}
	return err
}

// begin starts a write attempt.
func (s *Sink) begin() {
	s.open.begin()
	s.resolving = nil
}

// committed notes that the last write attempt committed.
func (s *Sink) committed() {
	n := 0
	for _, r := range s.resolving {
		s.open.committed(r)
		n += len(r.keys)
	}
	s.resolving = nil
	if n > 0 {
		s.Stats.Resolved.Add(int64(n))
		s.log.Info("dead letters resolved by a later successful write", "ids", n)
	}
}

// dropBroken gives up the writer connection if it can no longer be used, or
// if a transaction was left open, so the next attempt starts clean.
func (s *Sink) dropBroken() {
	if s.conn == nil {
		return
	}
	pc := s.conn.Conn().PgConn()
	if pc.IsClosed() || pc.TxStatus() != 'I' {
		s.releaseConn()
	}
}

func (s *Sink) releaseConn() {
	if s.conn == nil {
		return
	}
	pc := s.conn.Conn().PgConn()
	if !pc.IsClosed() && pc.TxStatus() != 'I' {
		// Never hand a connection in a transaction back to the pool.
		_ = s.conn.Hijack().Close(context.Background())
	} else {
		s.conn.Release()
	}
	s.conn, s.stmts = nil, nil
}
