package health

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/myusta/cdc/change"
)

// Options configure a Monitor.
type Options struct {
	Mode       string // replication or notify
	Thresholds Thresholds
	Logger     *slog.Logger
}

// Parts are what the monitor reads of the running daemon, each through a
// small interface that the part's owner implements; the monitor knows no
// source, sink or reconciler, only what they report.
type Parts struct {
	Source     Source     // the replication stream or the notify listener
	Slot       Slot       // nil when the source has no replication slot
	Writes     Writes     // the sink
	Reconciles Reconciles // the reconciler
	Objects    ObjectsReporter
	SourcePool *pgxpool.Pool
	ChatPool   *pgxpool.Pool
}

// Source reports the change source's state.
type Source interface{ SourceStatus() SourceStatus }

// SourceStatus is the change source's state.
type SourceStatus struct {
	// Connected reports that the source delivers changes now (the stream
	// streams; the listener listens and its first catch-up is done).
	Connected  bool
	Reconnects int64
	// Refused is the error no retry fixes that stops the source, "" when
	// there is none.
	Refused string
	// Notice is the last notice or warning the source sent on the
	// replication connection; zero when it sent none.
	Notice Notice
	// Pending is when the oldest change not yet in chat was committed on
	// the source (or notified); zero when nothing is pending.
	Pending time.Time
	// Positions are the WAL positions of a replication source; nil for
	// one without them.
	Positions *Positions
}

// Notice is a notice or warning a database sent.
type Notice struct {
	At       time.Time
	Severity string
	Text     string
}

// Positions are a replication source's WAL positions.
type Positions struct {
	Applied  uint64 // end of the last source transaction committed in chat
	Received uint64 // WAL received from the slot
	Position uint64 // WAL received and committed in chat (or skipped)
}

// Slot reports the replication slot as last read.
type Slot interface{ SlotStatus() SlotStats }

// Writes reports the sink's failures.
type Writes interface{ WriteCounts() WriteCounts }

// WriteCounts are the sink's failures since start.
type WriteCounts struct {
	Failures    int64 // failed chat write attempts (every retry)
	DeadLetters int64 // changes refused and recorded in sync_errors
	Failing     int64 // failed attempts of the write in progress
}

// Reconciles reports the reconciler's runs.
type Reconciles interface{ ReconcileCounts() ReconcileCounts }

// ReconcileCounts are the reconciler's runs since start.
type ReconcileCounts struct {
	Runs, FullRuns, Failures       int64
	Checked, Missing, Stale, Extra int64
	LastRun                        time.Time
	LastRunTook                    time.Duration
	// LastRepair is when a scheduled run last repaired rows (zero: never),
	// LastRepairRows how many.
	LastRepair     time.Time
	LastRepairRows int64
}

// ObjectsReporter reports what is wrong with cdc's objects on the source
// now ("" when nothing is), what was last found wrong, and when.
type ObjectsReporter interface {
	Report() (now, last string, lastAt time.Time)
}

// Timing of the monitor's own work.
const (
	sampleEvery     = time.Second
	throughputEvery = 10 * time.Second
	throughputKeep  = 60 // intervals: 10 minutes
)

// Monitor collects the daemon's state for the health model, /stats and
// the metrics. Create it before the parts (the sink needs ObserveBatch),
// Attach them once built, and Run it for the daemon's lifetime.
type Monitor struct {
	opts     Options
	log      *slog.Logger
	started  time.Time
	parts    atomic.Pointer[Parts]
	attached chan struct{}
	reg      *prometheus.Registry
	hist     histograms

	// Totals of ObserveBatch.
	upserts, deletes, truncates, batches  atomic.Int64
	lastBatch, lastBatchTook, lastLatency atomic.Int64 // unix ns, ns, ns

	standby atomic.Pointer[string] // the active instance, while standing by

	onChange   atomic.Pointer[func(StateChange)] // OnChange's callback
	lastStatus Status                            // the status watchState last saw (Run's goroutine)

	mu    sync.Mutex
	conn  connState
	rec   recState
	ring  []mark // cumulative totals every throughputEvery, oldest first
	probe probeState
}

// connState follows the source's connection between samples.
type connState struct {
	connected, ever bool
	since           time.Time // of the last change
}

// recState tells whether the reconciler's last run failed.
type recState struct {
	runs, failures int64
	lastFailed     bool
}

// mark is the cumulative rows and errors at one instant.
type mark struct {
	at           time.Time
	rows, errors int64
}

// NewMonitor returns a monitor with its metrics registry.
func NewMonitor(opts Options) *Monitor {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	now := time.Now()
	m := &Monitor{
		opts:     opts,
		log:      opts.Logger.With("component", "health"),
		started:  now,
		attached: make(chan struct{}),
		ring:     []mark{{at: now}},
		conn:     connState{since: now},
	}
	m.reg = m.newRegistry()
	return m
}

// Standby reports that this instance stands by while active (another cdc,
// described for people) holds the leader lock; Active that it took over.
func (m *Monitor) Standby(active string) { m.standby.Store(&active) }

// Active reports that this instance holds the leader lock.
func (m *Monitor) Active() { m.standby.Store(nil) }

// Attach hands the monitor the daemon's parts; when the sync starts
// again (the watch followed a change), the new parts replace the old.
func (m *Monitor) Attach(p Parts) {
	if m.parts.Swap(&p) == nil {
		m.mu.Lock()
		m.conn.since = time.Now()
		m.mu.Unlock()
		close(m.attached)
	}
}

// ObserveBatch records a batch committed in chat. The sink and the notify
// source call it (sink.Options.OnBatch, replication.NotifyOptions.OnBatch).
func (m *Monitor) ObserveBatch(b change.BatchInfo) {
	m.upserts.Add(int64(b.Upserts))
	m.deletes.Add(int64(b.Deletes))
	if b.Truncate {
		m.truncates.Add(1)
	}
	m.batches.Add(1)
	m.lastBatch.Store(time.Now().UnixNano())
	m.lastBatchTook.Store(int64(b.Took))
	m.hist.batchSize.Observe(float64(b.Received))
	m.hist.applyDuration.Observe(b.Took.Seconds())
	if b.Latency > 0 {
		m.lastLatency.Store(int64(b.Latency))
		m.hist.latency.Observe(b.Latency.Seconds())
	}
}

// Run samples the parts every second (and then tells OnChange's callback
// whether the overall status changed) and probes the databases until ctx
// ends.
func (m *Monitor) Run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Add(1)
	go func() {
		defer wg.Done()
		m.probeLoop(ctx)
	}()
	t := time.NewTicker(sampleEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			m.sample(now)
			m.watchState(now)
		}
	}
}

// sample notes connection changes, the reconciler's outcome and, every
// throughputEvery, the cumulative totals.
func (m *Monitor) sample(now time.Time) {
	p := m.parts.Load()
	if p == nil {
		return
	}
	m.connection(p, now)
	m.mu.Lock()
	defer m.mu.Unlock()
	if p.Reconciles != nil {
		r := p.Reconciles.ReconcileCounts()
		runs, failures := r.Runs, r.Failures
		switch {
		case failures > m.rec.failures:
			m.rec.lastFailed = true
		case runs > m.rec.runs:
			m.rec.lastFailed = false
		}
		m.rec.runs, m.rec.failures = runs, failures
	}
	if now.Sub(m.ring[len(m.ring)-1].at) >= throughputEvery {
		rows, errs := m.totals(p)
		m.ring = append(m.ring, mark{at: now, rows: rows, errors: errs})
		if len(m.ring) > throughputKeep+1 {
			m.ring = append(m.ring[:0], m.ring[len(m.ring)-throughputKeep-1:]...)
		}
	}
}

// connection reads whether the source is connected and returns the
// followed state.
func (m *Monitor) connection(p *Parts, now time.Time) connState {
	var connected bool
	if p.Source != nil {
		connected = p.Source.SourceStatus().Connected
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if connected != m.conn.connected {
		m.conn.connected, m.conn.since = connected, now
	}
	m.conn.ever = m.conn.ever || connected
	return m.conn
}

// totals returns the rows written to chat (stream and repairs) and the
// errors (failed write attempts and dead letters) since start.
func (m *Monitor) totals(p *Parts) (rows, errs int64) {
	rows = m.upserts.Load() + m.deletes.Load()
	if p.Reconciles != nil {
		r := p.Reconciles.ReconcileCounts()
		rows += r.Missing + r.Stale + r.Extra
	}
	if p.Writes != nil {
		w := p.Writes.WriteCounts()
		errs = w.Failures + w.DeadLetters
	}
	return rows, errs
}

// Health evaluates the health model now.
func (m *Monitor) Health() Health { return m.Stats(time.Now()).HealthStatus }

// Stats builds the /stats document as of now.
func (m *Monitor) Stats(now time.Time) *Stats {
	st := &Stats{
		Mode:          m.opts.Mode,
		StartedAt:     m.started,
		Now:           now,
		UptimeSeconds: now.Sub(m.started).Seconds(),
		Applied: AppliedStats{Upserts: m.upserts.Load(), Deletes: m.deletes.Load(), Truncates: m.truncates.Load(),
			Batches: m.batches.Load(), LatencyMs: time.Duration(m.lastLatency.Load()).Milliseconds()},
		Pools:      []PoolStats{},
		Databases:  []DatabaseStats{},
		Throughput: []Sample{},
	}
	st.Reconcile.IntervalMs = m.opts.Thresholds.ReconcileInterval.Milliseconds()
	st.DeadLetters.Recent = []DeadLetter{}
	st.Role = "active"
	if active := m.standby.Load(); active != nil {
		st.Role, st.ActiveInstance = "standby", *active
	}
	p := m.parts.Load()
	if p == nil {
		st.disconnected = now.Sub(m.started)
		m.finish(st, now, mark{at: now})
		return st
	}
	st.started = true
	conn := m.connection(p, now)
	st.Stream = StreamStats{Connected: conn.connected, Since: &conn.since, EverConnected: conn.ever}
	if !conn.connected {
		st.disconnected = now.Sub(conn.since)
	}
	sourceStats(st, p, now)
	st.IsRealTimeActive = conn.connected
	if p.Writes != nil {
		w := p.Writes.WriteCounts()
		st.Errors = w.Failures + w.DeadLetters
		st.ConsecutiveFailures = w.Failing
		st.DeadLetters.SinceStart = w.DeadLetters
	}
	objectsStats(st, p)
	m.reconcileStats(st, p)
	if p.Slot != nil {
		slot := p.Slot.SlotStatus()
		st.Slot = &slot
	}
	poolStats(st, p)
	rows, errs := m.totals(p)
	st.TotalSynced = rows
	m.finish(st, now, mark{at: now, rows: rows, errors: errs})
	return st
}

// sourceStats fills in what the change source reports.
func sourceStats(st *Stats, p *Parts, now time.Time) {
	if p.Source == nil {
		return
	}
	src := p.Source.SourceStatus()
	st.Stream.Reconnects, st.Stream.Refused = src.Reconnects, src.Refused
	if n := src.Notice; n.Text != "" {
		at := n.At
		st.Stream.Notice, st.Stream.NoticeSeverity, st.Stream.NoticeAt = n.Text, n.Severity, &at
	}
	if pos := src.Positions; pos != nil {
		if st.lsn = pos.Applied; st.lsn != 0 {
			str := pglogrepl.LSN(st.lsn).String()
			st.AppliedLSN = &str
		}
		lag := int64(0)
		if pos.Received > pos.Position {
			lag = int64(pos.Received - pos.Position)
		}
		st.LagBytes = &lag
	}
	if !src.Pending.IsZero() {
		st.IsSyncInProgress = true
		st.LagSeconds = max(now.Sub(src.Pending).Seconds(), 0)
	}
}

// objectsStats fills in what the watch of cdc's objects reports.
func objectsStats(st *Stats, p *Parts) {
	if p.Objects == nil {
		return
	}
	var at time.Time
	st.Stream.SourceObjects, st.Stream.SourceObjectsLast, at = p.Objects.Report()
	if !at.IsZero() {
		st.Stream.SourceObjectsLastAt = &at
	}
}

// poolStats fills in the connection pools' statistics.
func poolStats(st *Stats, p *Parts) {
	for _, pool := range []struct {
		name string
		pool *pgxpool.Pool
	}{{"source", p.SourcePool}, {"chat", p.ChatPool}} {
		if pool.pool != nil {
			s := pool.pool.Stat()
			st.Pools = append(st.Pools, PoolStats{Name: pool.name, Acquired: s.AcquiredConns(), Idle: s.IdleConns(), Total: s.TotalConns(), Max: s.MaxConns()})
		}
	}
}

func (m *Monitor) reconcileStats(st *Stats, p *Parts) {
	if p.Reconciles == nil {
		return
	}
	r := p.Reconciles.ReconcileCounts()
	rs := &st.Reconcile
	rs.Runs, rs.FullRuns, rs.Failures = r.Runs, r.FullRuns, r.Failures
	rs.RowsChecked = r.Checked
	rs.Missing, rs.Stale, rs.Extra = r.Missing, r.Stale, r.Extra
	rs.Repairs = rs.Missing + rs.Stale + rs.Extra
	rs.LastRunMs = r.LastRunTook.Milliseconds()
	if !r.LastRepair.IsZero() {
		t := r.LastRepair
		rs.LastRepair, rs.LastRepairRows = &t, r.LastRepairRows
	}
	if !r.LastRun.IsZero() {
		t := r.LastRun
		rs.LastRun = &t
	}
	m.mu.Lock()
	rs.LastRunFailed = m.rec.lastFailed
	m.mu.Unlock()
}

// finish fills in what comes from the monitor's own samples and probes,
// then evaluates the health model.
func (m *Monitor) finish(st *Stats, now time.Time, cur mark) {
	if ns := m.lastBatch.Load(); ns != 0 {
		t := time.Unix(0, ns)
		st.LastSyncTime, st.LastSyncDuration = &t, time.Duration(m.lastBatchTook.Load()).Milliseconds()
	}
	if r := st.Reconcile.LastRun; r != nil && (st.LastSyncTime == nil || r.After(*st.LastSyncTime)) {
		st.LastSyncTime, st.LastSyncDuration = r, st.Reconcile.LastRunMs
	}
	m.mu.Lock()
	for i := 1; i < len(m.ring); i++ {
		a, b := m.ring[i-1], m.ring[i]
		st.Throughput = append(st.Throughput, Sample{At: b.at, Seconds: b.at.Sub(a.at).Seconds(), Rows: b.rows - a.rows, Errors: b.errors - a.errors})
	}
	// The error window starts at the newest mark at least errorWindow old
	// (or the oldest one kept).
	from := m.ring[0]
	for _, mk := range m.ring {
		if now.Sub(mk.at) < errorWindow {
			break
		}
		from = mk
	}
	st.window = window{rows: cur.rows - from.rows, errors: cur.errors - from.errors, span: now.Sub(from.at)}
	st.Databases = append(st.Databases, m.probe.databases...)
	if m.probe.unresolvedKnown {
		n := m.probe.unresolved
		st.DeadLetters.Unresolved = &n
	}
	st.DeadLetters.Recent = append(st.DeadLetters.Recent, m.probe.recent...)
	m.mu.Unlock()
	st.HealthStatus = evaluate(st, m.opts.Thresholds)
	st.Ready, _ = ready(st.HealthStatus)
}
