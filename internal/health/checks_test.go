package health

import (
	"strings"
	"testing"
	"time"
)

var testThresholds = Thresholds{
	LagWarn:           30 * time.Second,
	LagCritical:       5 * time.Minute,
	SlotWALWarnBytes:  1 << 30,
	ReconcileInterval: time.Minute,
	StallAfter:        time.Minute,
}

func ptr[T any](v T) *T { return &v }

// healthyStats is a replication-mode daemon with nothing wrong.
func healthyStats() *Stats {
	checked := time.Now()
	return &Stats{
		Mode:     "replication",
		started:  true,
		Stream:   StreamStats{Connected: true, EverConnected: true},
		LagBytes: ptr(int64(0)),
		Pools:    []PoolStats{{Name: "source", Acquired: 1, Max: 10}, {Name: "chat", Acquired: 2, Max: 10}},
		Databases: []DatabaseStats{
			{Name: "source", Reachable: true}, {Name: "chat", Reachable: true},
		},
		DeadLetters: DeadLetterStats{Unresolved: ptr(int64(0))},
		Slot:        &SlotStats{Name: "cdc_users", Exists: true, Active: true, WALStatus: "reserved", RetainedBytes: 1 << 20, CheckedAt: &checked},
		Reconcile:   ReconcileStats{Runs: 3, IntervalMs: 60_000, LastRunMs: 120},
		window:      window{rows: 5000, errors: 0, span: errorWindow},
	}
}

// TestEvaluate drives each check through its transitions and checks the
// verdict, which check says so, the recommendation and readiness.
func TestEvaluate(t *testing.T) {
	tests := []struct {
		name   string
		change func(s *Stats)
		status Status
		check  string // the check that is not passing ("" when all pass)
		level  Level
		ready  bool
		rec    string // part of the recommendation
	}{
		{"all well", func(s *Stats) {}, Healthy, "", Pass, true, ""},
		{"starting", func(s *Stats) { s.started, s.disconnected = false, 5*time.Second }, Degraded, CheckStream, Warn, false, "wait"},
		{"stuck starting", func(s *Stats) { s.started, s.disconnected = false, 2*time.Minute }, Unhealthy, CheckStream, Fail, false, "ERROR lines"},
		{"first copy takes long", func(s *Stats) {
			s.Stream = StreamStats{}
			s.disconnected = 20 * time.Minute
		}, Degraded, CheckStream, Warn, false, "first copy"},
		{"reconnecting", func(s *Stats) { s.Stream.Connected, s.disconnected = false, 10*time.Second }, Degraded, CheckStream, Warn, false, "reconnects"},
		{"disconnected too long", func(s *Stats) { s.Stream.Connected, s.disconnected = false, 61*time.Second }, Unhealthy, CheckStream, Fail, false, "SOURCE_DATABASE_URL"},
		{"lag at the limit", func(s *Stats) { s.LagSeconds = 30 }, Healthy, "", Pass, true, ""},
		{"lag over LAG_WARN", func(s *Stats) { s.LagSeconds = 31 }, Degraded, CheckLag, Warn, false, "falling behind"},
		{"lag over LAG_CRITICAL", func(s *Stats) { s.LagSeconds = 301 }, Unhealthy, CheckLag, Fail, false, "not keeping up"},
		{"error rate under the target", func(s *Stats) { s.window = window{rows: 10_000, errors: 9, span: errorWindow} }, Healthy, "", Pass, true, ""},
		{"error rate over the target, under 1%", func(s *Stats) { s.window = window{rows: 1000, errors: 5, span: errorWindow} }, Healthy, "", Pass, true, ""},
		{"error rate over 1%", func(s *Stats) { s.window = window{rows: 1000, errors: 20, span: errorWindow} }, Degraded, CheckErrorRate, Warn, true, "sync_errors"},
		{"too few writes to rate", func(s *Stats) { s.window = window{rows: 50, errors: 40, span: errorWindow} }, Healthy, "", Pass, true, ""},
		{"five consecutive failures", func(s *Stats) { s.ConsecutiveFailures = 5 }, Healthy, "", Pass, true, ""},
		{"six consecutive failures", func(s *Stats) { s.ConsecutiveFailures = 6 }, Unhealthy, CheckFailures, Fail, false, "CHAT_DATABASE_URL"},
		{"reconcile near the interval", func(s *Stats) { s.Reconcile.LastRunMs = 48_000 }, Degraded, CheckReconcile, Warn, true, "SYNC_INTERVAL_MINUTES"},
		{"reconcile failed", func(s *Stats) { s.Reconcile.LastRunFailed = true }, Degraded, CheckReconcile, Warn, true, "next run retries"},
		{"reconcile repaired rows a while ago", func(s *Stats) {
			s.Now = time.Now()
			s.Reconcile.LastRepair, s.Reconcile.LastRepairRows = ptr(s.Now.Add(-time.Minute)), 12
		}, Degraded, CheckReconcile, Warn, true, "another writer of chat's users table"},
		{"reconcile repaired rows long ago", func(s *Stats) {
			s.Now = time.Now()
			s.Reconcile.LastRepair, s.Reconcile.LastRepairRows = ptr(s.Now.Add(-11*time.Minute)), 12
		}, Healthy, "", Pass, true, ""},
		{"source objects changed", func(s *Stats) {
			s.Stream.SourceObjects = "table public.users was taken out of publication cdc_users"
		}, Unhealthy, CheckObjects, Fail, false, "Living with backend migrations"},
		{"source objects put right a while ago", func(s *Stats) {
			s.Now = time.Now()
			s.Stream.SourceObjectsLast, s.Stream.SourceObjectsLastAt = "publication cdc_users was dropped", ptr(s.Now.Add(-time.Minute))
		}, Degraded, CheckObjects, Warn, true, "find who changed"},
		{"source objects put right long ago", func(s *Stats) {
			s.Now = time.Now()
			s.Stream.SourceObjectsLast, s.Stream.SourceObjectsLastAt = "publication cdc_users was dropped", ptr(s.Now.Add(-11*time.Minute))
		}, Healthy, "", Pass, true, ""},
		{"source warned a while ago", func(s *Stats) {
			s.Now = time.Now()
			s.Stream.Notice, s.Stream.NoticeSeverity, s.Stream.NoticeAt = "skipped loading publication \"cdc_users\"", "WARNING", ptr(s.Now.Add(-time.Minute))
		}, Degraded, CheckNotices, Warn, true, "source's warning says"},
		{"source warned long ago", func(s *Stats) {
			s.Now = time.Now()
			s.Stream.Notice, s.Stream.NoticeSeverity, s.Stream.NoticeAt = "skipped loading publication \"cdc_users\"", "WARNING", ptr(s.Now.Add(-16*time.Minute))
		}, Healthy, "", Pass, true, ""},
		{"source sent a notice", func(s *Stats) {
			s.Now = time.Now()
			s.Stream.Notice, s.Stream.NoticeSeverity, s.Stream.NoticeAt = "something to note", "NOTICE", ptr(s.Now)
		}, Healthy, "", Pass, true, ""},
		{"chat pool busy", func(s *Stats) { s.Pools[1].Acquired = 8 }, Degraded, CheckPools, Warn, true, "CHAT_DB_POOL_SIZE"},
		{"chat unreachable", func(s *Stats) {
			s.Databases[1] = DatabaseStats{Name: "chat", Error: "connection refused"}
		}, Unhealthy, CheckDatabases, Fail, false, "database server is up"},
		{"dead letters waiting", func(s *Stats) { s.DeadLetters.Unresolved = ptr(int64(2)) }, Degraded, CheckDeadLetters, Warn, true, "sync_errors"},
		{"slot not seen yet", func(s *Stats) { s.Slot.Exists = false }, Healthy, "", Pass, true, ""},
		{"slot holds much WAL", func(s *Stats) { s.Slot.RetainedBytes = 2 << 30 }, Degraded, CheckSlot, Warn, true, "behind or was stopped"},
		{"slot unreserved", func(s *Stats) { s.Slot.WALStatus = "unreserved" }, Unhealthy, CheckSlot, Fail, true, "max_slot_wal_keep_size"},
		{"slot lost", func(s *Stats) { s.Slot.WALStatus = "lost" }, Unhealthy, CheckSlot, Fail, true, "recreates the slot"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := healthyStats()
			tt.change(st)
			h := evaluate(st, testThresholds)
			if h.Status != tt.status {
				t.Errorf("status = %s, want %s; checks %+v", h.Status, tt.status, h.Checks)
			}
			for name, c := range h.Checks {
				if name != tt.check && c.Status != Pass {
					t.Errorf("check %s = %s (%s), want pass", name, c.Status, c.Message)
				}
			}
			if tt.check == "" {
				if len(h.Recommendations) != 1 || h.Recommendations[0] != AllOK {
					t.Errorf("recommendations = %q, want only %q", h.Recommendations, AllOK)
				}
			} else {
				c := h.Checks[tt.check]
				if c.Status != tt.level || !strings.Contains(c.Recommendation, tt.rec) {
					t.Errorf("check %s = %+v, want %s with a recommendation containing %q", tt.check, c, tt.level, tt.rec)
				}
				if len(h.Recommendations) != 1 || !strings.HasPrefix(h.Recommendations[0], tt.check+": ") {
					t.Errorf("recommendations = %q, want the one of %s", h.Recommendations, tt.check)
				}
			}
			if ok, why := ready(h); ok != tt.ready || ok != (why == "") {
				t.Errorf("ready = %v (%q), want %v", ok, why, tt.ready)
			}
		})
	}
}

// TestEvaluate_NotifyMode checks that notify mode has no slot check and
// no byte lag, and is healthy all the same.
func TestEvaluate_NotifyMode(t *testing.T) {
	st := healthyStats()
	st.Mode, st.Slot, st.LagBytes = "notify", nil, nil
	h := evaluate(st, testThresholds)
	if h.Status != Healthy {
		t.Fatalf("status = %s: %+v", h.Status, h.Checks)
	}
	if _, ok := h.Checks[CheckSlot]; ok {
		t.Error("notify mode has a slot check")
	}
	if msg := h.Checks[CheckLag].Message; strings.Contains(msg, "received") {
		t.Errorf("lag message %q speaks of bytes in notify mode", msg)
	}
	st.Stream.Connected, st.disconnected = false, 2*time.Minute
	if c := evaluate(st, testThresholds).Checks[CheckStream]; c.Status != Fail || !strings.Contains(c.Message, "notify listener") {
		t.Errorf("stream check = %+v, want a failing notify listener", c)
	}
}

// TestSlotCheck_Dropped checks a slot missing while the stream is down
// after having streamed: it was dropped.
func TestSlotCheck_Dropped(t *testing.T) {
	st := healthyStats()
	st.Slot.Exists = false
	st.Stream.Connected = false
	if c := slotCheck(st.Slot, st.Stream, testThresholds); c.Status != Warn || !strings.Contains(c.Recommendation, "recreates it") {
		t.Errorf("slot check = %+v, want a warning that cdc recreates it", c)
	}
}

func TestBytesString(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 3 << 29: "1.5 GiB"} {
		if got := bytesString(n); got != want {
			t.Errorf("bytesString(%d) = %q, want %q", n, got, want)
		}
	}
}
