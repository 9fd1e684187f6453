package replication

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgxlisten"

	"github.com/myusta/cdc/change"
	"github.com/myusta/cdc/internal/db"
	"github.com/myusta/cdc/internal/ident"
	"github.com/myusta/cdc/internal/keyed"
	"github.com/myusta/cdc/internal/retry"
	"github.com/myusta/cdc/internal/schema"
	"github.com/myusta/cdc/migrations"
)

// NotifyOptions configure a Notify source.
type NotifyOptions struct {
	SourceURL    string        // the listener's own connection
	Table        *schema.Table // the source table
	BatchMaxRows int           // most ids applied together
	Retry        retry.Policy  // listener reconnects
	DrainTimeout time.Duration // how long shutdown may spend on ids in hand
	// OnBatch, when set, is called after each batch of notified ids is
	// applied (for metrics); Latency counts from the oldest notification.
	OnBatch func(change.BatchInfo)
	Logger  *slog.Logger
}

// NotifyStats describe the notify source's work since start.
type NotifyStats struct {
	Notifications    atomic.Int64
	Upserts          atomic.Int64
	Deletes          atomic.Int64
	Truncates        atomic.Int64
	Reconnects       atomic.Int64
	Connected        atomic.Bool
	LastNotification atomic.Int64 // unix ns
	Latency          atomic.Int64 // notification received -> applied, ns, of the last batch
	Pending          atomic.Int64 // receive time (unix ns) of the oldest notification not yet applied; 0 when none
}

// Notify is the fallback source for sources that forbid logical
// replication: a trigger sends {op, id} on a channel, and Notify applies
// the current source row of each notified id through the sink (an absent
// row is deleted). Notifications sent while the listener is disconnected
// are gone; CatchUp makes up for them on every reconnect.
type Notify struct {
	opts  NotifyOptions
	pool  *pgxpool.Pool // source
	sink  change.Sink
	log   *slog.Logger
	queue chan notice

	mu       sync.Mutex
	syncs    map[string]chan struct{}
	lastSeen time.Time     // of the last notification or (re)connect
	missed   time.Duration // longest gap not yet caught up
	first    bool          // the first connect's catch-up is pending
	catchUp  chan struct{} // a catch-up is pending

	// CatchUp, set before Run, runs on every (re)connect once LISTEN is in
	// place, with how long notifications may have been missed (0 on the
	// first connect: unknown). It is where lost notifications are made up
	// for (the daemon hands it the reconciler, which is built after the
	// source because it uses Sync as its barrier).
	CatchUp func(ctx context.Context, missed time.Duration) error
	// CatchUps counts completed catch-ups (tests wait on it).
	CatchUps atomic.Int64

	// Stats is updated as the source runs.
	Stats NotifyStats
}

// notice is one notification.
type notice struct {
	Op    string          `json:"op"`
	RawID json.RawMessage `json:"id,omitempty"`
	ID    string          `json:"-"` // the key as text (see keyed.FormatKey)
	at    time.Time
}

// parseNotice reads a notification's payload. The id is a JSON string or
// number (json_build_object writes a key as its JSON form), or for a key of
// several columns a JSON array of them, kept as its text.
func parseNotice(payload string) (notice, bool) {
	var nt notice
	if err := json.Unmarshal([]byte(payload), &nt); err != nil || nt.Op == "" {
		return nt, false
	}
	raw := strings.TrimSpace(string(nt.RawID))
	switch {
	case raw == "" || raw == "null":
	case raw[0] == '[':
		nt.ID = raw
	default:
		id, err := schema.JSONScalar(nt.RawID)
		if err != nil {
			return nt, false
		}
		nt.ID = id
	}
	return nt, true
}

// NewNotify returns a notify source reading through pool.
func NewNotify(pool *pgxpool.Pool, s change.Sink, opts NotifyOptions) *Notify {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.DrainTimeout == 0 {
		opts.DrainTimeout = 30 * time.Second
	}
	return &Notify{opts: opts, pool: pool, sink: s, log: opts.Logger.With("component", "notify"),
		queue: make(chan notice, 10_000), syncs: map[string]chan struct{}{}, catchUp: make(chan struct{}, 1)}
}

// Run listens until ctx ends, then applies the ids in hand (within
// DrainTimeout). A lost connection is re-established with backoff, forever;
// a failure to apply ends Run with the error.
func (n *Notify) Run(ctx context.Context) error {
	listenCtx, cancelListen := context.WithCancelCause(ctx)
	defer cancelListen(nil)
	applyCtx, cancelApply := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelApply()
	stop := context.AfterFunc(ctx, func() { time.AfterFunc(n.opts.DrainTimeout, cancelApply) })
	defer stop()
	applied := make(chan error, 1)
	go func() {
		err := n.apply(applyCtx)
		if err != nil {
			cancelListen(err)
		}
		applied <- err
	}()
	caughtUp := make(chan struct{})
	go func() { defer close(caughtUp); n.catchUpLoop(listenCtx) }()

	l := &pgxlisten.Listener{
		Connect:        n.connect,
		ReconnectDelay: n.opts.Retry.Initial,
		LogError: func(ctx context.Context, err error) {
			if ctx.Err() != nil {
				return
			}
			if n.Stats.Connected.Swap(false) {
				n.Stats.Reconnects.Add(1)
			}
			n.log.Warn("notify listener", "err", err)
		},
	}
	l.Handle(migrations.NotifyChannel, n)
	err := l.Listen(listenCtx)
	n.Stats.Connected.Store(false)
	<-caughtUp
	close(n.queue)
	if aerr := <-applied; aerr != nil {
		return fmt.Errorf("apply notified ids: %w", aerr)
	}
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// catchUpLoop runs CatchUp whenever a (re)connect asks for it, retrying a
// failed catch-up with backoff until it succeeds: a missed window is never
// dropped. Reconnects during a catch-up merge into one more run covering
// the longest gap.
func (n *Notify) catchUpLoop(ctx context.Context) {
	if n.CatchUp == nil {
		return
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-n.catchUp:
		}
		n.mu.Lock()
		missed, first := n.missed, n.first
		n.missed, n.first = 0, false
		n.mu.Unlock()
		if first {
			missed = 0
		}
		if err := retry.Keep(ctx, n.opts.Retry, n.log, "catch-up after (re)connect (the scheduled reconciler covers the gap too)", func(ctx context.Context) error {
			return n.CatchUp(ctx, missed)
		}); err != nil {
			return // ctx ended
		}
		n.CatchUps.Add(1)
	}
}

// connect opens the listener's connection, retrying with backoff.
func (n *Notify) connect(ctx context.Context) (*pgx.Conn, error) {
	var conn *pgx.Conn
	err := retry.Do(ctx, n.opts.Retry, n.log, "connect notify listener", func(ctx context.Context) (err error) {
		conn, err = db.Connect(ctx, n.opts.SourceURL)
		return err
	})
	return conn, err
}

// HandleBacklog runs once LISTEN is in place on each connection: from now
// on nothing is missed, so what was missed before can be made up for. The
// catch-up itself runs beside the listener (catchUpLoop), so notifications
// keep flowing meanwhile.
func (n *Notify) HandleBacklog(_ context.Context, _ string, _ *pgx.Conn) error {
	n.mu.Lock()
	var missed time.Duration
	if n.lastSeen.IsZero() {
		n.first = true
	} else {
		missed = time.Since(n.lastSeen)
		n.missed = max(n.missed, missed)
	}
	n.lastSeen = time.Now()
	n.mu.Unlock()
	n.Stats.Connected.Store(true)
	if missed == 0 {
		n.log.Info("listening for changes", "channel", migrations.NotifyChannel, "table", n.opts.Table.String())
	} else {
		n.log.Warn("notify listener reconnected; notifications sent while it was away are lost: reconciling", "missed", missed.Round(time.Millisecond).String())
	}
	select {
	case n.catchUp <- struct{}{}:
	default: // one is pending already; it reads the merged gap
	}
	return nil
}

// HandleNotification queues one notification for the applier.
func (n *Notify) HandleNotification(ctx context.Context, m *pgconn.Notification, _ *pgx.Conn) error {
	nt, ok := parseNotice(m.Payload)
	if !ok {
		// Not from cdc's trigger: skip it. Its text is not logged: another
		// trigger (say, the replaced service's) may send row data.
		n.log.Warn("ignoring a notification that is not {\"op\":…,\"id\":…}; is another trigger sending on this channel?",
			"channel", m.Channel, "payload_bytes", len(m.Payload))
		return nil
	}
	now := time.Now()
	nt.at = now
	n.Stats.Notifications.Add(1)
	n.Stats.LastNotification.Store(now.UnixNano())
	n.mu.Lock()
	n.lastSeen = now
	n.mu.Unlock()
	select {
	case n.queue <- nt:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Sync waits until every change committed on the source before the call
// has been applied: it sends a marker through the same channel (delivered
// after all earlier notifications) and waits for the applier to reach it.
func (n *Notify) Sync(ctx context.Context) error {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	token := hex.EncodeToString(b)
	done := make(chan struct{})
	n.mu.Lock()
	n.syncs[token] = done
	n.mu.Unlock()
	defer func() {
		n.mu.Lock()
		delete(n.syncs, token)
		n.mu.Unlock()
	}()
	payload, _ := json.Marshal(map[string]string{"op": "sync", "id": token})
	if _, err := n.pool.Exec(ctx, "SELECT pg_notify($1, $2)", migrations.NotifyChannel, string(payload)); err != nil {
		return fmt.Errorf("send sync marker: %w", err)
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// pendingIDs are the notified ids not yet applied, each once, in order.
type pendingIDs struct {
	ids    []string
	seen   map[string]bool
	oldest time.Time // when the oldest of them was received
}

// apply takes notifications in order, coalescing the ids that arrive while
// a batch is being applied, until the queue is closed.
func (n *Notify) apply(ctx context.Context) error {
	p := &pendingIDs{seen: map[string]bool{}}
	for {
		nt, ok := <-n.queue
		if !ok {
			return n.flush(ctx, p)
		}
		for more := true; more; {
			if err := n.take(ctx, p, nt); err != nil {
				return err
			}
			if len(p.ids) >= n.opts.BatchMaxRows {
				break
			}
			select {
			case nt, more = <-n.queue:
				if !more {
					return n.flush(ctx, p)
				}
			default:
				more = false
			}
		}
		if err := n.flush(ctx, p); err != nil {
			return err
		}
	}
}

// take handles one notification: an id joins p; a truncate or a sync
// marker first applies what p holds, so the order of the source holds.
func (n *Notify) take(ctx context.Context, p *pendingIDs, nt notice) error {
	switch nt.Op {
	case "insert", "update", "delete":
		if !p.seen[nt.ID] {
			p.seen[nt.ID] = true
			p.ids = append(p.ids, nt.ID)
		}
		if p.oldest.IsZero() {
			p.oldest = nt.at
			n.Stats.Pending.Store(p.oldest.UnixNano())
		}
	case "truncate":
		if err := n.flush(ctx, p); err != nil {
			return err
		}
		return n.truncate(ctx)
	case "sync":
		if err := n.flush(ctx, p); err != nil {
			return err
		}
		n.mu.Lock()
		if done, ok := n.syncs[nt.ID]; ok {
			close(done)
			delete(n.syncs, nt.ID)
		}
		n.mu.Unlock()
	default:
		n.log.Warn("ignoring a notification with an unknown op", "op", nt.Op)
	}
	return nil
}

// flush applies the ids p holds and empties it.
func (n *Notify) flush(ctx context.Context, p *pendingIDs) error {
	if len(p.ids) == 0 {
		return nil
	}
	start := time.Now()
	res, err := n.applyIDs(ctx, p.ids)
	if err != nil {
		return err
	}
	latency := time.Since(p.oldest)
	n.Stats.Latency.Store(int64(latency))
	n.Stats.Pending.Store(0)
	if n.opts.OnBatch != nil {
		n.opts.OnBatch(change.BatchInfo{Received: len(p.ids), Upserts: res.Missing + res.Stale, Deletes: res.Extra,
			DeadLetters: res.Dead, Latency: latency, Took: time.Since(start)})
	}
	p.ids, p.oldest = p.ids[:0], time.Time{}
	clear(p.seen)
	return nil
}

// applyIDs makes chat equal to the current source rows of ids.
func (n *Notify) applyIDs(ctx context.Context, ids []string) (change.RepairResult, error) {
	keys, err := n.keys(ctx, ids)
	if err != nil {
		return change.RepairResult{}, err
	}
	res, err := n.sink.Repair(ctx, keys, keyed.PoolFetch(n.pool, n.opts.Table))
	if err != nil {
		return res, err
	}
	n.Stats.Upserts.Add(int64(res.Missing + res.Stale))
	n.Stats.Deletes.Add(int64(res.Extra))
	return res, nil
}

// keys turns ids, as the trigger sent them (text), into binary key values.
// An id that is not a valid key is logged and skipped.
func (n *Notify) keys(ctx context.Context, ids []string) ([][]byte, error) {
	var keys [][]byte
	err := retry.Do(ctx, n.opts.Retry, n.log, "read notified ids", func(ctx context.Context) error {
		conn, err := n.pool.Acquire(ctx)
		if err != nil {
			return err
		}
		defer conn.Release()
		var bad []string
		keys, bad, err = keyed.ParseKeys(ctx, conn.Conn().PgConn(), n.opts.Table, ids)
		for _, id := range bad {
			n.log.Warn("ignoring a notification whose id is not a valid key", "user_id", id, "key", ident.DisplayList(n.opts.Table.KeyNames()))
		}
		return err
	})
	return keys, err
}

func (n *Notify) truncate(ctx context.Context) error {
	n.log.Warn("source table truncated; emptying the chat table")
	b := change.NewBatch(len(n.opts.Table.Columns), n.opts.Table.Key)
	b.Truncate()
	if err := n.sink.Apply(ctx, b); err != nil {
		return err
	}
	n.Stats.Truncates.Add(1)
	return nil
}

// CopyAll copies the whole source table into chat (the bulk copy of a
// first start), with progress.
func (n *Notify) CopyAll(ctx context.Context) error {
	n.log.Info("chat table is empty: copying the source table")
	return copyTable(ctx, n.pool, n.opts.Table, "", 1, n.sink, change.Checkpoint{}, n.log)
}
