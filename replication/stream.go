package replication

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/myusta/cdc/change"
	"github.com/myusta/cdc/internal/db"
	"github.com/myusta/cdc/internal/retry"
	"github.com/myusta/cdc/internal/schema"
	"github.com/myusta/cdc/migrations"
)

// Options configure a Stream.
type Options struct {
	SourceURL      string        // DSN of the source; the stream opens its replication connection from it
	Slot           string        // replication slot name
	Publication    string        // publication name
	Table          *schema.Table // the source table's synced columns
	BatchMaxRows   int           // a batch is full at this many changes
	BatchMaxBytes  int           // a batch is full at this many bytes of values (0: no bound)
	BatchMaxWait   time.Duration // how long a small batch may wait for more while the sink is idle
	CopyWorkers    int           // parts of the first copy copied at once (at most)
	StatusInterval time.Duration // longest gap between standby status updates
	Retry          retry.Policy  // reconnect backoff; Loud = MAX_RECONNECT_ATTEMPTS
	DrainTimeout   time.Duration // how long shutdown may spend committing the batch in hand
	SpoolDir       string        // where large streamed source transactions wait for their commit ("" = the system's temporary directory)
	// Primary is the source's primary when the source is a hot standby
	// (nil otherwise, or when cdc was given none): a slot created on a
	// standby waits for the primary's next snapshot of running
	// transactions, which cdc asks it for.
	Primary *pgxpool.Pool
	Logger  *slog.Logger
}

// Stats describes the stream's progress since start.
type Stats struct {
	Inserts    atomic.Int64
	Updates    atomic.Int64
	Deletes    atomic.Int64
	Truncates  atomic.Int64
	Reconnects atomic.Int64
	Received   atomic.Uint64 // highest source WAL position seen
	Confirmed  atomic.Uint64 // position last confirmed to the slot
	Applied    atomic.Uint64 // end LSN of the last transaction committed in chat
	LastCommit atomic.Int64  // source commit time (unix ns) of the newest change committed in chat
	Latency    atomic.Int64  // source commit -> chat commit of the last batch, ns
	Streaming  atomic.Bool   // a replication connection is streaming
	// Position is the source position up to which every change is
	// committed in chat: the applied checkpoint, or the WAL end of a
	// keepalive received while nothing was in flight.
	Position atomic.Uint64
	// Pending is the source commit time (unix ns) of the oldest change
	// received and not yet committed in chat; 0 when none is.
	Pending atomic.Int64
	// Refused is the error no retry fixes that ended the last session (a
	// statement chat or the source refuses), nil once changes flow again.
	Refused atomic.Pointer[string]
	// Notice is the last notice or warning the source sent on the
	// replication connection, nil when it sent none.
	Notice atomic.Pointer[Notice]
}

// Notice is a notice or warning the source sent on the replication
// connection.
type Notice struct {
	At       time.Time
	Severity string // WARNING, NOTICE, …
	Text     string // the message with its detail and hint
}

// notice logs a server notice with its detail and hint and keeps it for
// health.
func (s *Stream) notice(n *pgconn.PgError) {
	text := n.Message
	sev := n.SeverityUnlocalized // 9.6+; Severity may be translated
	if sev == "" {
		sev = n.Severity
	}
	attrs := []any{"severity", sev, "code", n.Code}
	if n.Detail != "" {
		text += "; detail: " + n.Detail
		attrs = append(attrs, "detail", n.Detail)
	}
	if n.Hint != "" {
		text += "; hint: " + n.Hint
		attrs = append(attrs, "hint", n.Hint)
	}
	level := slog.LevelInfo
	if sev == "WARNING" {
		level = slog.LevelWarn
	}
	s.log.Log(context.Background(), level, "source on the replication connection: "+n.Message, attrs...)
	s.Stats.Notice.Store(&Notice{At: time.Now(), Severity: sev, Text: text})
}

// Stream consumes the slot with pgoutput and feeds the sink. It owns its
// replication connection and reconnects with backoff; a database outage
// never ends Run.
type Stream struct {
	opts Options
	pool *pgxpool.Pool // source pool: slot inspection and the first copy
	sink change.Sink
	log  *slog.Logger

	// OnStream, when set before Run, runs each time streaming (re)starts
	// (the watch checks the source's objects then).
	OnStream func()
	// Stats is updated as the stream runs.
	Stats Stats

	nudged atomic.Bool            // Sync asks the reader for a keepalive
	wake   atomic.Pointer[func()] // interrupts the active reader's receive

	// The source as the last session found it (Run's goroutine only): a
	// new timeline means a standby was promoted, and kept says whether
	// the slot was kept in step with the standbys then.
	timeline  int32
	kept      bool
	onStandby bool // the source is a hot standby
}

// positionSQL is the source's WAL position: on a primary the insert
// position, not pg_current_wal_lsn() (the write position), since with
// asynchronous commit a committed transaction can lie beyond the write
// position for a moment; on a standby source, what it has replayed.
const positionSQL = "CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_insert_lsn() END"

// Sync waits until every change the source had committed when Sync was
// called is committed in chat (or ctx ends). An idle stream is nudged to
// ask the server for a keepalive, so its position moves at once.
func (s *Stream) Sync(ctx context.Context) error {
	var now string
	if err := s.pool.QueryRow(ctx, "SELECT "+positionSQL+"::text").Scan(&now); err != nil {
		return fmt.Errorf("read source position: %w", err)
	}
	target, err := pglogrepl.ParseLSN(now)
	if err != nil {
		return err
	}
	for pglogrepl.LSN(s.Stats.Position.Load()) < target {
		s.nudged.Store(true)
		if w := s.wake.Load(); w != nil {
			(*w)()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("stream at %s, source at %s: %w", pglogrepl.LSN(s.Stats.Position.Load()), target, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

// New returns a stream reading the source through pool and opts.SourceURL
// and writing through applier.
func New(pool *pgxpool.Pool, applier change.Sink, opts Options) *Stream {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.DrainTimeout == 0 {
		opts.DrainTimeout = 30 * time.Second
	}
	return &Stream{opts: opts, pool: pool, sink: applier, log: opts.Logger.With("component", "stream", "slot", opts.Slot)}
}

// Run streams until ctx ends, then commits the batch in hand (within
// DrainTimeout), confirms it to the slot and returns nil. Connection failures
// are retried: MAX_RECONNECT_ATTEMPTS fast attempts with growing delays, then
// a probe every RETRY_MAX_DELAY, logged at ERROR.
func (s *Stream) Run(ctx context.Context) error {
	// Writes started before shutdown may finish for DrainTimeout after it.
	applyCtx, cancelApply := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelApply()
	stop := context.AfterFunc(ctx, func() { time.AfterFunc(s.opts.DrainTimeout, cancelApply) })
	defer stop()

	loop := s.opts.Retry.Loop()
	for {
		streamed, err := s.session(ctx, applyCtx)
		if ctx.Err() != nil {
			if err != nil && !errors.Is(err, context.Canceled) {
				return fmt.Errorf("shutdown: %w", err)
			}
			return nil
		}
		var pe *PreflightError
		if errors.As(err, &pe) {
			return err // a setup problem: retrying cannot fix it
		}
		if streamed {
			loop.Progress()
		}
		s.Stats.Reconnects.Add(1)
		attempt, wait, loud := loop.Failed()
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "55006" {
			err = fmt.Errorf("%w (another consumer holds slot %s: normal for a minute after a network cut, until the server notices the old connection is gone; if another cdc runs on this slot, stop one of them)", err, s.opts.Slot)
		}
		if s.recreated(ctx, err) {
			continue // the next session copies again
		}
		switch {
		case refused(err):
			// A statement a database refuses fails the same way however
			// often it is retried: say so at once, keep the slot, and try
			// again slowly (prepare checks the statements first).
			msg := err.Error()
			s.Stats.Refused.Store(&msg)
			wait = s.opts.Retry.Max
			s.log.Error("the stream stopped on an error no retry fixes; the slot keeps the changes, and cdc tries again every RETRY_MAX_DELAY until the cause is fixed", "retry_in", wait, "err", err)
		case loud:
			s.log.Error("replication still failing; probing periodically", "attempt", attempt, "retry_in", wait.Round(time.Millisecond), "err", err)
		default:
			s.log.Warn("replication interrupted; reconnecting", "attempt", attempt, "retry_in", wait.Round(time.Millisecond), "err", err)
		}
		if !retry.Sleep(ctx, wait) {
			return nil
		}
	}
}

// session runs one replication connection: it makes sure the slot and the
// first copy exist, then streams. streamed reports that START_REPLICATION
// succeeded.
func (s *Stream) session(ctx, applyCtx context.Context) (streamed bool, err error) {
	conn, err := db.ConnectReplication(ctx, s.opts.SourceURL)
	if err != nil {
		return false, err
	}
	defer func() {
		closeCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = conn.Close(closeCtx)
	}()
	// A source transaction the last session did not receive whole comes
	// again from its start: what its first batches wrote goes.
	s.sink.Discard()
	sys, err := pglogrepl.IdentifySystem(ctx, conn)
	if err != nil {
		return false, fmt.Errorf("identify system: %w", err)
	}
	cp, err := s.prepare(ctx, conn, sys.Timeline)
	if err != nil {
		return false, err
	}
	s.Stats.Refused.Store(nil) // prepare checked the statements
	args := []string{
		// Protocol 2 streams a transaction larger than the source's
		// logical_decoding_work_mem while it runs (streamed.go), instead
		// of the walsender spilling it to disk until its commit.
		"proto_version '2'", "streaming 'on'",
		"publication_names " + quoteLiteral(s.opts.Publication),
		fmt.Sprintf("binary '%t'", s.opts.Table.Format == schema.Binary),
	}
	if err := pglogrepl.StartReplication(ctx, conn, s.opts.Slot, cp.LSN, pglogrepl.StartReplicationOptions{PluginArgs: args}); err != nil {
		return false, fmt.Errorf("start replication: %w", err)
	}
	s.log.Info("streaming changes", "from_lsn", cp.LSN, "table", s.opts.Table.String(), "format", s.opts.Table.Format.String())
	s.Stats.Streaming.Store(true)
	defer s.Stats.Streaming.Store(false)
	if s.OnStream != nil {
		s.OnStream()
	}
	r := newReader(s, conn, cp, applyCtx)
	return true, r.run(ctx)
}

// slotInfo is a row of pg_replication_slots.
type slotInfo struct {
	Plugin, Database, WALStatus string
	ActivePID                   *int32
	Failover                    bool
}

// prepare inspects the slot and the stored checkpoint and returns where to
// start streaming, creating the slot and copying the table when needed.
func (s *Stream) prepare(ctx context.Context, conn *pgconn.PgConn, timeline int32) (change.Checkpoint, error) {
	if s.Stats.Refused.Load() != nil {
		// The last session ended on a refused statement: make sure the
		// statements work before dropping or creating any slot.
		if err := s.sink.Check(ctx); err != nil {
			return change.Checkpoint{}, err
		}
	}
	cp, haveCP, err := s.sink.Checkpoint(ctx)
	if err != nil {
		return cp, err
	}
	if err := s.recallTimeline(ctx); err != nil {
		return cp, err
	}
	var slot *slotInfo
	var info slotInfo
	var currentDB string
	err = s.pool.QueryRow(ctx, `SELECT COALESCE(s.plugin, ''), COALESCE(s.database, ''), COALESCE(s.wal_status, ''), s.active_pid,
       COALESCE((to_jsonb(s) ->> 'failover')::bool, false), current_database()
FROM (SELECT 1) one LEFT JOIN pg_replication_slots s ON s.slot_name = $1`, s.opts.Slot).
		Scan(&info.Plugin, &info.Database, &info.WALStatus, &info.ActivePID, &info.Failover, &currentDB)
	if err != nil {
		return cp, fmt.Errorf("inspect slot: %w", err)
	}
	if info.Plugin != "" {
		slot = &info
	}
	switch {
	case slot == nil:
	case slot.Plugin != "pgoutput" || slot.Database != currentDB:
		return cp, &PreflightError{
			Cause: fmt.Sprintf("slot %q exists but belongs to another consumer (plugin %s, database %s)", s.opts.Slot, slot.Plugin, slot.Database),
			Fix:   "set SLOT_NAME to a free name, or drop that slot if it is unused",
		}
	case slot.WALStatus == "lost":
		s.log.Error("replication slot was invalidated (wal_status=lost): the WAL it needed was removed, changes since the checkpoint are gone from the stream; recreating the slot and copying the table again (the copy repairs the chat table)",
			"checkpoint", cp.LSN)
		if err := s.dropSlot(ctx, conn); err != nil {
			return cp, err
		}
		slot = nil
	case !haveCP:
		s.log.Warn("slot exists but the chat database has no checkpoint: an earlier first copy did not finish; dropping the slot and copying again")
		if err := s.dropSlot(ctx, conn); err != nil {
			return cp, err
		}
		slot = nil
	case s.timeline != 0 && timeline != s.timeline && !s.kept:
		s.log.Warn("the source was promoted from a standby whose copy of the slot synchronized_standby_slots did not keep in step: chat may hold changes the new primary lacks; recreating the slot and copying the table (the copy compares every row and repairs chat)",
			"timeline", timeline, "was", s.timeline)
		if err := s.dropSlot(ctx, conn); err != nil {
			return cp, err
		}
		slot = nil
	case s.timeline != 0 && timeline != s.timeline:
		if s.onStandby {
			s.log.Warn("the source standby was promoted: continuing from its own slot", "timeline", timeline, "was", s.timeline, "checkpoint", cp.LSN)
		} else {
			s.log.Warn("the source was promoted from a standby: continuing from its synced slot", "timeline", timeline, "was", s.timeline, "checkpoint", cp.LSN)
		}
	}
	if err := s.noteSource(ctx, conn, timeline, slot); err != nil {
		return cp, err
	}
	if slot != nil {
		return cp, nil
	}
	if haveCP {
		s.log.Warn("slot is missing although chat has a checkpoint (it was dropped or lost); creating it and copying again", "checkpoint", cp.LSN)
	}
	return s.firstCopy(ctx, conn)
}

// noteSource records the source's timeline and whether a promotion would
// keep the slot, and makes an existing slot a failover slot where the
// source supports it (a slot created before an upgrade to 17 is not one).
func (s *Stream) noteSource(ctx context.Context, conn *pgconn.PgConn, timeline int32, slot *slotInfo) error {
	p, err := ReadPromotion(ctx, s.pool, s.opts.Slot)
	if err != nil {
		return err
	}
	if slot != nil && !slot.Failover && serverMajor(conn) >= 17 && !p.OnStandby {
		if err := makeFailover(ctx, conn, s.opts.Slot); err != nil {
			return err
		}
		s.log.Info("made the slot a failover slot, which standbys with sync_replication_slots keep a copy of")
		p.Failover = true
	}
	if slot == nil {
		p.Failover = serverMajor(conn) >= 17 && !p.OnStandby // the slot about to be created
	}
	s.timeline, s.kept, s.onStandby = timeline, p.Keeps(), p.OnStandby
	if m, ok := s.sink.(timelines); ok {
		return m.StoreSourceTimeline(ctx, change.Timeline{ID: timeline, Keeps: s.kept})
	}
	return nil
}

// timelines is a sink that keeps the source's timeline across restarts
// (sink.Sink, in chat's cdc_source), so that a cdc started after a
// promotion knows whether the slot it finds can be trusted.
type timelines interface {
	SourceTimeline(ctx context.Context) (change.Timeline, bool, error)
	StoreSourceTimeline(ctx context.Context, t change.Timeline) error
}

// recallTimeline loads the recorded timeline when this process has not
// seen the source yet.
func (s *Stream) recallTimeline(ctx context.Context) error {
	m, ok := s.sink.(timelines)
	if !ok || s.timeline != 0 {
		return nil
	}
	t, ok, err := m.SourceTimeline(ctx)
	if err != nil || !ok {
		return err
	}
	s.timeline, s.kept = t.ID, t.Keeps
	return nil
}

// recreated handles a stream that stopped because the publication was
// dropped and created again: before PostgreSQL 18 the walsender decodes a
// change made in between with a catalog that lacks the publication and
// stops on it ("publication … does not exist") however often it is
// restarted, so the slot can never get past it. It drops the slot, so the
// next session creates it again and copies the table (which repairs
// chat), and reports whether it did.
func (s *Stream) recreated(ctx context.Context, err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "42704" || !strings.Contains(pgErr.Message, "publication") {
		return false
	}
	var exists bool
	if qerr := s.pool.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)", s.opts.Publication).Scan(&exists); qerr != nil || !exists {
		return false // not back yet: a refused statement until it is
	}
	s.log.Error("publication "+s.opts.Publication+" was dropped and created again while changes were made: the slot cannot decode those changes (PostgreSQL before 18 stops on them), so cdc drops the slot, creates it again and copies the table, which repairs chat",
		"err", err)
	if _, derr := migrations.DropSlot(ctx, s.pool, s.opts.Slot); derr != nil {
		s.log.Warn("dropping the slot failed; trying again", "err", derr)
	}
	return true
}

func (s *Stream) dropSlot(ctx context.Context, conn *pgconn.PgConn) error {
	if err := pglogrepl.DropReplicationSlot(ctx, conn, s.opts.Slot, pglogrepl.DropReplicationSlotOptions{}); err != nil {
		return fmt.Errorf("drop slot %s: %w", s.opts.Slot, err)
	}
	return nil
}

// refused reports whether err is a database refusing a statement (not a
// row: those become dead letters), which no retry fixes.
func refused(err error) bool {
	var ce *change.CheckError
	var pgErr *pgconn.PgError
	if errors.As(err, &ce) {
		return true
	}
	if !errors.As(err, &pgErr) || retry.Transient(err) {
		return false
	}
	switch pgErr.Code[:2] {
	case "42", "0A", "2B", "3F": // syntax/undefined/privilege, unsupported, dependent objects, schema
		return true
	}
	return false
}

func quoteLiteral(s string) string {
	out := []byte{'\''}
	for i := 0; i < len(s); i++ {
		if s[i] == '\'' {
			out = append(out, '\'')
		}
		out = append(out, s[i])
	}
	return string(append(out, '\''))
}
