package replication

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/myusta/cdc/change"
)

// sourceTx is the source transaction being received.
type sourceTx struct {
	open    bool
	final   pglogrepl.LSN // its commit record's LSN, which names it
	commit  time.Time
	changes int64 // change messages seen in it so far
	skip    bool  // applied before the restart
	skipN   int64 // its first skipN changes were applied before the restart
}

// applied is the outcome of one batch handed to the sink.
type applied struct {
	b   *change.Batch
	err error
}

// reader owns one replication connection. It decodes messages into the
// current batch while the previous batch is being written (at most one batch
// is in flight), and confirms to the slot only positions the sink reports as
// committed.
type reader struct {
	s        *Stream
	conn     *pgconn.PgConn
	dec      *decoder
	applyCtx context.Context
	work     chan *change.Batch
	done     chan applied

	cur, spare, inflight *change.Batch
	// openTx: the last batch handed on was Open, so the sink holds a chat
	// transaction that the next batch must commit.
	openTx bool

	resume    change.Checkpoint // stored checkpoint at session start
	committed change.Checkpoint // committed in chat (visible)
	durable   pglogrepl.LSN     // committed in chat and on disk (Sink.Durable)
	lastProbe time.Time         // when chat last told its flushed WAL: a probe, or a write's first statement
	lastEnd   pglogrepl.LSN     // end of the last complete transaction received

	tx      sourceTx // the transaction being received
	st      streams  // transactions the source streams before their commit (streamed.go)
	skipped int      // transactions skipped as already applied

	received   pglogrepl.LSN // highest WAL position seen
	idleLSN    pglogrepl.LSN // keepalive WAL end seen while nothing was in flight
	reported   pglogrepl.LSN // flush position last sent
	lastStatus time.Time
	lastMsg    time.Time
	replyDue   bool

	pace pace // the load's rate and the writer's speed (linger.go)
	// lead is how long the source's walsender held the current batch's
	// first change after its commit (both times by the source's clock);
	// the batch lingers that much less (lingerFor).
	lead time.Duration
}

func newReader(s *Stream, conn *pgconn.PgConn, cp change.Checkpoint, applyCtx context.Context) *reader {
	ncols := len(s.opts.Table.Columns)
	return &reader{
		s:         s,
		conn:      conn,
		dec:       newDecoder(s.opts.Table, s.log),
		applyCtx:  applyCtx,
		work:      make(chan *change.Batch, 1),
		done:      make(chan applied, 1),
		cur:       change.NewBatch(ncols, s.opts.Table.Key),
		spare:     change.NewBatch(ncols, s.opts.Table.Key),
		resume:    cp,
		committed: cp,
		lastEnd:   cp.LSN,
		received:  cp.LSN,
		reported:  0,
		lastMsg:   time.Now(),
		pace:      newPace(),
	}
}

// wake interrupts a blocked receive. net.Conn deadlines may be set from any
// goroutine; a timeout leaves the pgconn connection usable.
func (r *reader) wake() { _ = r.conn.Conn().SetReadDeadline(time.Now()) }

// run streams until ctx ends (then drains) or the connection fails (then
// waits for the batch in flight, so the next session starts from an exact
// checkpoint).
func (r *reader) run(ctx context.Context) (err error) {
	defer r.closeStreams()
	defer r.startWriter()()
	stop := context.AfterFunc(ctx, r.wake)
	defer stop()
	wake := r.wake
	r.s.wake.Store(&wake)
	defer r.s.wake.Store(nil)
	// Until a batch commits, what chat has applied is the stored
	// checkpoint (an idle start reports it, not 0).
	if cp := uint64(r.committed.LSN); cp > r.s.Stats.Applied.Load() {
		r.s.Stats.Applied.Store(cp)
	}
	r.publishPosition()
	defer func() {
		if r.inflight != nil {
			if werr := r.handle(<-r.done); err == nil {
				err = werr
			}
		}
	}()

	interval := r.s.opts.StatusInterval
	silence := 3*interval + 5*time.Second
	for {
		if err := r.poll(); err != nil {
			return err
		}
		if r.s.nudged.Swap(false) {
			r.replyDue = true
		}
		if ctx.Err() != nil {
			return r.drain()
		}
		r.dispatch(false)
		for r.inflight != nil && r.full() {
			// Backpressure: stop reading until the sink takes the next
			// batch, but keep telling the server we are alive.
			if err := r.waitApplied(ctx, interval); err != nil {
				return err
			}
			r.dispatch(false)
		}
		if err := r.status(false); err != nil {
			return err
		}
		if time.Since(r.lastMsg) > silence {
			return fmt.Errorf("no message from the source in %s; the connection looks dead", silence.Round(time.Second))
		}
		if err := r.receive(ctx, interval); err != nil {
			return err
		}
	}
}

// startWriter starts the writer goroutine, which applies the batches
// handed to it one at a time (work and done hold one), and returns the
// function that ends it and waits for it.
func (r *reader) startWriter() (stop func()) {
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		for b := range r.work {
			err := r.s.sink.Apply(r.applyCtx, b)
			r.done <- applied{b, err}
			r.wake()
		}
	}()
	return func() { close(r.work); <-exited }
}

// receive waits for the next message until the read deadline (a status
// update, a lingering batch or a durability probe due) and handles it.
func (r *reader) receive(ctx context.Context, interval time.Duration) error {
	if r.st.replay != nil {
		return r.replayNext()
	}
	_ = r.conn.Conn().SetReadDeadline(r.readDeadline(interval))
	// A batch finishing or ctx ending after this point moves the
	// deadline to now, so the receive below returns at once.
	if len(r.done) > 0 || ctx.Err() != nil {
		return nil
	}
	msg, err := r.conn.ReceiveMessage(context.Background())
	if err != nil {
		if pgconn.Timeout(err) {
			return nil
		}
		return fmt.Errorf("receive: %w", err)
	}
	r.lastMsg = time.Now()
	switch msg := msg.(type) {
	case *pgproto3.CopyData:
		return r.copyData(msg.Data)
	case *pgproto3.ErrorResponse:
		return fmt.Errorf("replication stream: %w", pgconn.ErrorResponseToPgError(msg))
	case *pgproto3.NoticeResponse:
		// A walsender warns and goes on (18 skips a dropped publication
		// with a WARNING; a promoted standby warns of a missing slot
		// named in synchronized_standby_slots): so does cdc, saying so.
		r.s.notice(pgconn.ErrorResponseToPgError((*pgproto3.ErrorResponse)(msg)))
		return nil
	default:
		return fmt.Errorf("replication stream: unexpected %T", msg)
	}
}

// poll takes the result of a finished batch, if any, without blocking.
func (r *reader) poll() error {
	select {
	case a := <-r.done:
		return r.handle(a)
	default:
		return nil
	}
}

// waitApplied blocks until the batch in flight is committed, sending
// standby status meanwhile.
func (r *reader) waitApplied(ctx context.Context, interval time.Duration) error {
	t := time.NewTimer(interval)
	defer t.Stop()
	for {
		select {
		case a := <-r.done:
			return r.handle(a)
		case <-t.C:
			if err := r.status(true); err != nil {
				return err
			}
			r.lastMsg = time.Now() // we are not reading; silence is ours
			t.Reset(interval)
		case <-ctx.Done():
			return nil
		}
	}
}

func (r *reader) handle(a applied) error {
	r.inflight = nil
	r.pace.written()
	// The write read chat's flushed WAL first thing: a steady trickle of
	// writes keeps the durable position moving without probes of its own.
	r.lastProbe = r.pace.sent
	if a.err != nil {
		return a.err
	}
	st := &r.s.Stats
	st.Refused.Store(nil)
	if a.b.Open {
		// Written into the chat transaction that stays open until the
		// source transaction's last batch: nothing is committed yet.
		a.b.Reset()
		r.spare = a.b
		r.publishPending()
		return nil
	}
	r.committed = a.b.Checkpoint
	st.Applied.Store(uint64(r.committed.LSN))
	r.publishPosition()
	if !a.b.LastCommit.IsZero() {
		st.LastCommit.Store(a.b.LastCommit.UnixNano())
		st.Latency.Store(int64(time.Since(a.b.LastCommit)))
	}
	a.b.Reset()
	r.spare = a.b
	r.publishPending()
	return nil
}

// publishPending makes the commit time of the oldest change not yet
// committed in chat visible in Stats.Pending.
func (r *reader) publishPending() {
	var oldest time.Time
	if r.inflight != nil {
		oldest = r.inflight.FirstCommit
	}
	if oldest.IsZero() && r.cur.Received > 0 {
		oldest = r.cur.FirstCommit
	}
	var ns int64
	if !oldest.IsZero() {
		ns = oldest.UnixNano()
	}
	r.s.Stats.Pending.Store(ns)
}

// full reports that the current batch holds BATCH_MAX_ROWS changes or
// BATCH_MAX_MB of values. Wide rows reach the second first: ten thousand
// 1.3-kB rows, held by the reader, the writer and the COPY buffer, made
// cdc's peak RSS 134 MB; 40-43 MB at 2 MB (BENCHMARKS.md, session 13).
func (r *reader) full() bool {
	return r.cur.Received >= r.s.opts.BatchMaxRows || (r.s.opts.BatchMaxBytes > 0 && r.cur.Size() >= r.s.opts.BatchMaxBytes)
}

// idle reports that nothing received is waiting to be committed.
func (r *reader) idle() bool {
	return r.inflight == nil && r.cur.Received == 0 && !r.tx.open && r.st.replay == nil && r.lastEnd <= r.committed.LSN
}

// dispatch hands the current batch to the sink when the sink is free and
// the batch ends on a transaction boundary, or when it is full: then it
// ends inside a source transaction, and the sink writes it into a chat
// transaction that stays open until the source transaction's last batch
// (Batch.Open), so chat's readers see the transaction whole. force sends
// whatever ends on a boundary (shutdown); the part of a transaction that
// has not all arrived stays behind and is applied again after a restart.
func (r *reader) dispatch(force bool) {
	defer r.publishPending()
	if r.inflight != nil {
		return
	}
	switch {
	case r.tx.open:
		if force || !r.full() {
			return
		}
		r.cur.Open = true
	case r.cur.Received == 0 && !r.openTx:
		if r.lastEnd > r.committed.LSN {
			// Only skipped or empty transactions since the last commit:
			// nothing to write, the position simply moves.
			r.committed = change.Checkpoint{LSN: r.lastEnd}
			r.publishPosition()
		}
		return
	case !force && !r.openTx && r.lingering():
		return
	default:
		// The batch ends on a boundary; it commits the chat transaction
		// an earlier Open batch left open, if any (even with no change of
		// its own: the transaction's last change filled the batch before).
		r.cur.Checkpoint = change.Checkpoint{LSN: r.lastEnd}
	}
	r.openTx = r.cur.Open
	r.inflight = r.cur
	r.cur = r.spare
	if r.cur == nil {
		r.cur = change.NewBatch(len(r.s.opts.Table.Columns), r.s.opts.Table.Key)
	}
	r.spare = nil
	r.pace.sent = time.Now()
	r.work <- r.inflight
}

// drain commits the batch in hand and confirms it.
func (r *reader) drain() error {
	deadline := time.Now().Add(r.s.opts.DrainTimeout)
	for {
		if r.inflight != nil {
			if err := r.handle(<-r.done); err != nil {
				return fmt.Errorf("commit batch in hand: %w", err)
			}
		}
		r.dispatch(true)
		if r.inflight == nil || time.Now().After(deadline) {
			break
		}
	}
	// The last commits on disk before the last confirmation, if chat
	// flushes them within a second (its WAL writer does within
	// wal_writer_delay); else the slot keeps them, which is safe.
	for deadline := time.Now().Add(time.Second); r.durable < r.committed.LSN && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		r.lastProbe = time.Time{}
		if err := r.settle(); err != nil {
			return err
		}
	}
	if err := r.status(true); err != nil {
		return err
	}
	// End COPY BOTH cleanly: the server handles messages in order, so once
	// it answers CopyDone it has also processed the final confirmation.
	_ = r.conn.Conn().SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := pglogrepl.SendStandbyCopyDone(context.Background(), r.conn); err != nil {
		r.s.log.Warn("ending replication cleanly failed; the slot may confirm a little less than was applied", "err", err)
	}
	r.s.log.Info("stream stopped", "applied_lsn", r.committed.LSN, "confirmed_lsn", r.reported)
	return nil
}

// publishPosition makes visiblePos visible to Sync.
func (r *reader) publishPosition() { r.s.Stats.Position.Store(uint64(r.visiblePos())) }

// visiblePos is how far chat shows the source: the committed checkpoint,
// or a later keepalive WAL end seen while nothing was in flight.
func (r *reader) visiblePos() pglogrepl.LSN {
	return max(r.committed.LSN, r.idleLSN)
}

// flushPos is what may be confirmed: visiblePos once every commit is on
// disk in chat, else the last checkpoint that is.
func (r *reader) flushPos() pglogrepl.LSN {
	if r.durable < r.committed.LSN {
		return r.durable
	}
	return r.visiblePos()
}

// probeEvery is how long the writer stays idle before its last commits are
// checked for durability (chat's WAL writer flushes them within
// wal_writer_delay). Writes read the flush position themselves, so this
// only moves the confirmed position after the last write; at 100 ms the
// probes cost a trickle of 10 changes/s ~28 % more CPU (BENCHMARKS.md,
// session 9).
const probeEvery = time.Second

// settle brings r.durable up to date; while the writer is idle it lets the
// sink ask chat (at most every probeEvery, for at most 2 s). Only a lost
// commit is an error: the session must start again from chat's checkpoint.
func (r *reader) settle() error {
	if r.durable >= r.committed.LSN {
		return nil
	}
	ctx := r.applyCtx
	probe := r.inflight == nil && time.Since(r.lastProbe) >= probeEvery
	if probe {
		r.lastProbe = time.Now()
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
	}
	cp, err := r.s.sink.Durable(ctx, probe)
	if errors.Is(err, change.ErrCommitsLost) {
		return err
	}
	if err != nil {
		r.s.log.Debug("could not read chat's flushed WAL position; confirming to the slot only what is known on disk", "err", err)
	}
	r.durable = max(r.durable, cp.LSN)
	return nil
}

// status sends a standby status update when due: every StatusInterval, when
// the server asks, soon after the committed position moves, or when force.
func (r *reader) status(force bool) error {
	if err := r.settle(); err != nil {
		return err
	}
	now := time.Now()
	pos := r.flushPos()
	due := force || r.replyDue || now.Sub(r.lastStatus) >= r.s.opts.StatusInterval ||
		(pos > r.reported && now.Sub(r.lastStatus) >= time.Second)
	if !due {
		return nil
	}
	err := pglogrepl.SendStandbyStatusUpdate(context.Background(), r.conn, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: max(r.received, pos),
		WALFlushPosition: pos,
		WALApplyPosition: pos,
		ClientTime:       now,
		ReplyRequested:   true, // the answering keepalive proves the connection is alive
	})
	if err != nil {
		return fmt.Errorf("send standby status: %w", err)
	}
	r.reported, r.lastStatus, r.replyDue = pos, now, false
	r.s.Stats.Confirmed.Store(uint64(pos))
	return nil
}
