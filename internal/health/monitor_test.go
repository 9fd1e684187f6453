package health

import (
	"encoding/json"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/myusta/cdc/change"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func newTestMonitor(mode string) *Monitor {
	return NewMonitor(Options{Mode: mode, Thresholds: testThresholds, Logger: quiet})
}

// TestMonitor_Stats checks that /stats reads the parts and the batches
// observed: the old service's fields, the LSN, both lags and the errors.
func TestMonitor_Stats(t *testing.T) {
	m := newTestMonitor("replication")
	st := m.Stats(time.Now())
	if c := st.HealthStatus.Checks[CheckStream]; c.Status != Warn || !strings.Contains(c.Message, "starting") || st.Ready {
		t.Errorf("before Attach: stream check %+v, ready %v; want a starting warning, not ready", c, st.Ready)
	}

	stream := &fakeStream{}
	sk, rec := &fakeWrites{}, &fakeReconciles{}
	m.Attach(Parts{Source: stream, Writes: sk, Reconciles: rec})
	stream.Streaming.Store(true)
	stream.Applied.Store(0x16B3748)
	stream.Position.Store(0x16B3748)
	stream.Received.Store(0x16B3800)
	rec.Runs.Store(1)
	rec.LastRun.Store(time.Now().Add(-time.Minute).UnixNano())
	rec.LastRunTook.Store(int64(90 * time.Millisecond))
	rec.Missing.Store(2)
	m.ObserveBatch(change.BatchInfo{Received: 5, Upserts: 3, Deletes: 1, Latency: 20 * time.Millisecond, Took: 4 * time.Millisecond})
	sk.Failures.Store(1)
	sk.DeadLetters.Store(1)
	sk.Failing.Store(2)
	stream.Pending.Store(time.Now().Add(-3 * time.Second).UnixNano())

	st = m.Stats(time.Now())
	if st.TotalSynced != 6 || st.Errors != 2 || st.ConsecutiveFailures != 2 || st.DeadLetters.SinceStart != 1 {
		t.Errorf("totalSynced %d errors %d consecutive %d dead letters %d; want 6, 2, 2, 1", st.TotalSynced, st.Errors, st.ConsecutiveFailures, st.DeadLetters.SinceStart)
	}
	if st.AppliedLSN == nil || *st.AppliedLSN != "0/16B3748" || st.LagBytes == nil || *st.LagBytes != 0xB8 {
		t.Errorf("appliedLsn %v lagBytes %v; want 0/16B3748 and 184", st.AppliedLSN, st.LagBytes)
	}
	if !st.IsSyncInProgress || st.LagSeconds < 3 || st.LagSeconds > 10 {
		t.Errorf("in progress %v, lag %.2fs; want true and about 3s", st.IsSyncInProgress, st.LagSeconds)
	}
	if !st.IsRealTimeActive || st.LastSyncTime == nil || time.Since(*st.LastSyncTime) > 10*time.Second || st.LastSyncDuration != 4 {
		t.Errorf("realtime %v, last sync %v (%d ms); want true, the batch just observed, 4 ms", st.IsRealTimeActive, st.LastSyncTime, st.LastSyncDuration)
	}
	if st.Applied != (AppliedStats{Upserts: 3, Deletes: 1, Batches: 1, LatencyMs: 20}) || st.Reconcile.Repairs != 2 || st.Reconcile.LastRunMs != 90 {
		t.Errorf("applied %+v, reconcile %+v", st.Applied, st.Reconcile)
	}

	stream.Pending.Store(0)
	if st = m.Stats(time.Now()); st.IsSyncInProgress || st.LagSeconds != 0 {
		t.Errorf("nothing pending: in progress %v, lag %.2fs; want false, 0", st.IsSyncInProgress, st.LagSeconds)
	}
	// A reconcile run after the last batch is the last sync.
	rec.LastRun.Store(time.Now().UnixNano())
	if st = m.Stats(time.Now()); st.LastSyncDuration != 90 {
		t.Errorf("lastSyncDuration = %d, want the reconcile run's 90", st.LastSyncDuration)
	}
}

// TestMonitor_ThroughputAndErrorWindow feeds 10-second samples and checks
// the throughput series, its length limit and the error-rate window.
func TestMonitor_ThroughputAndErrorWindow(t *testing.T) {
	m := newTestMonitor("replication")
	sk := &fakeWrites{}
	m.Attach(Parts{Source: &fakeStream{}, Writes: sk})
	t0 := m.started
	at := func(i int) time.Time { return t0.Add(time.Duration(i) * throughputEvery) }
	for i := 1; i <= 40; i++ {
		m.ObserveBatch(change.BatchInfo{Received: 10, Upserts: 10})
		if i == 35 {
			sk.DeadLetters.Add(1)
		}
		m.sample(at(i).Add(-time.Second)) // not yet 10 s since the last mark: no sample
		m.sample(at(i))
	}
	st := m.Stats(at(40))
	if len(st.Throughput) != 40 {
		t.Fatalf("%d throughput samples, want 40", len(st.Throughput))
	}
	for i, s := range st.Throughput {
		wantErr := int64(0)
		if i == 34 {
			wantErr = 1
		}
		if s.Rows != 10 || s.Seconds != 10 || s.Errors != wantErr || !s.At.Equal(at(i+1)) {
			t.Fatalf("sample %d = %+v, want 10 rows in 10 s, %d errors, at %s", i, s, wantErr, at(i+1))
		}
	}
	// The window starts at the newest mark at least 5 minutes old: 100 s.
	if want := (window{rows: 300, errors: 1, span: 300 * time.Second}); st.window != want {
		t.Errorf("error window = %+v, want %+v", st.window, want)
	}
	for i := 41; i <= 100; i++ {
		m.sample(at(i))
	}
	if n := len(m.Stats(at(100)).Throughput); n != throughputKeep {
		t.Errorf("%d samples kept, want %d", n, throughputKeep)
	}
}

// TestMonitor_ConnectionAndReconcile follows the source's connection and
// the reconciler's last outcome between samples.
func TestMonitor_ConnectionAndReconcile(t *testing.T) {
	m := newTestMonitor("replication")
	stream := &fakeStream{}
	rec := &fakeReconciles{}
	m.Attach(Parts{Source: stream, Writes: &fakeWrites{}, Reconciles: rec})
	t0 := time.Now()
	if st := m.Stats(t0); st.Stream.EverConnected || st.HealthStatus.Checks[CheckStream].Status != Warn {
		t.Errorf("never connected: %+v, %+v", st.Stream, st.HealthStatus.Checks[CheckStream])
	}
	stream.Streaming.Store(true)
	m.sample(t0.Add(time.Second))
	stream.Streaming.Store(false)
	down := t0.Add(2 * time.Second)
	m.sample(down)
	st := m.Stats(down.Add(61 * time.Second))
	if !st.Stream.EverConnected || st.Stream.Connected || !st.Stream.Since.Equal(down) {
		t.Errorf("stream = %+v, want down since %s", st.Stream, down)
	}
	if c := st.HealthStatus.Checks[CheckStream]; c.Status != Fail || st.HealthStatus.Status != Unhealthy {
		t.Errorf("down for 61s: %+v, %s; want fail, UNHEALTHY", c, st.HealthStatus.Status)
	}

	for _, step := range []struct {
		runs, failures int64
		failed         bool
	}{{1, 0, false}, {1, 1, true}, {1, 1, true}, {2, 1, false}} {
		rec.Runs.Store(step.runs)
		rec.Failures.Store(step.failures)
		m.sample(time.Now())
		if got := m.Stats(time.Now()).Reconcile.LastRunFailed; got != step.failed {
			t.Errorf("runs %d failures %d: lastRunFailed %v, want %v", step.runs, step.failures, got, step.failed)
		}
	}
}

// TestMonitor_NotifyMode checks notify mode: connected only once the first
// catch-up is done, lag from the oldest notification, and no LSN, byte
// lag or slot (null in JSON).
func TestMonitor_NotifyMode(t *testing.T) {
	m := newTestMonitor("notify")
	n := &fakeStream{}
	n.Notify.Store(true)
	m.Attach(Parts{Source: n, Writes: &fakeWrites{}})
	n.Connected.Store(true)
	if st := m.Stats(time.Now()); st.IsRealTimeActive {
		t.Error("listener counted as active before its first catch-up")
	}
	n.CatchUps.Add(1)
	n.Pending.Store(time.Now().Add(-2 * time.Second).UnixNano())
	m.ObserveBatch(change.BatchInfo{Received: 2, Upserts: 1, Deletes: 1, Latency: 5 * time.Millisecond})
	st := m.Stats(time.Now())
	if !st.IsRealTimeActive || st.LagSeconds < 2 || st.TotalSynced != 2 || st.HealthStatus.Status != Healthy {
		t.Errorf("realtime %v lag %.1f total %d status %s (%+v)", st.IsRealTimeActive, st.LagSeconds, st.TotalSynced, st.HealthStatus.Status, st.HealthStatus.Checks)
	}
	body, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"mode":"notify"`, `"appliedLsn":null`, `"lagBytes":null`} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/stats lacks %s: %s", want, body)
		}
	}
	if strings.Contains(string(body), `"slot"`) {
		t.Errorf("notify mode /stats has a slot: %s", body)
	}
}
