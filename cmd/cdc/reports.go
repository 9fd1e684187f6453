package main

import (
	"time"

	"github.com/myusta/cdc/internal/health"
	"github.com/myusta/cdc/reconcile"
	"github.com/myusta/cdc/replication"
	"github.com/myusta/cdc/sink"
)

// What each part reports to health (health.Parts): the monitor reads these
// small interfaces and knows none of the parts.

func (s *streamSource) SourceStatus() health.SourceStatus {
	st := &s.Stats
	out := health.SourceStatus{
		Connected:  st.Streaming.Load(),
		Reconnects: st.Reconnects.Load(),
		Pending:    unixTime(st.Pending.Load()),
		Positions:  &health.Positions{Applied: st.Applied.Load(), Received: st.Received.Load(), Position: st.Position.Load()},
	}
	if r := st.Refused.Load(); r != nil {
		out.Refused = *r
	}
	if n := st.Notice.Load(); n != nil {
		out.Notice = health.Notice{At: n.At, Severity: n.Severity, Text: n.Text}
	}
	return out
}

func (n *notifySource) SourceStatus() health.SourceStatus {
	st := &n.Stats
	// Until the first catch-up (bulk copy or full compare) is done, chat
	// is not following the source yet.
	return health.SourceStatus{
		Connected:  st.Connected.Load() && n.CatchUps.Load() > 0,
		Reconnects: st.Reconnects.Load(),
		Pending:    unixTime(st.Pending.Load()),
	}
}

// slotReport is the slot watcher as health reads it.
type slotReport struct{ *replication.SlotWatcher }

func (w slotReport) SlotStatus() health.SlotStats {
	h := w.Last()
	s := health.SlotStats{Name: w.Slot, Exists: h.Exists, Active: h.Active, WALStatus: h.WALStatus,
		RetainedBytes: h.RetainedBytes, LagBytes: h.LagBytes, Promotion: h.Promotion}
	if h.SafeWALBytes >= 0 && h.Exists {
		safe := h.SafeWALBytes
		s.SafeWALBytes = &safe
	}
	if !h.CheckedAt.IsZero() {
		t := h.CheckedAt
		s.CheckedAt = &t
	}
	return s
}

// writesReport is the sink's counters as health reads them.
type writesReport struct{ *sink.Stats }

func (s writesReport) WriteCounts() health.WriteCounts {
	return health.WriteCounts{Failures: s.Failures.Load(), DeadLetters: s.DeadLetters.Load(), Failing: s.Failing.Load()}
}

// reconcileReport is the reconciler's counters as health reads them.
type reconcileReport struct{ *reconcile.Stats }

func (r reconcileReport) ReconcileCounts() health.ReconcileCounts {
	return health.ReconcileCounts{
		Runs: r.Runs.Load(), FullRuns: r.FullRuns.Load(), Failures: r.Failures.Load(),
		Checked: r.Checked.Load(), Missing: r.Missing.Load(), Stale: r.Stale.Load(), Extra: r.Extra.Load(),
		LastRun: unixTime(r.LastRun.Load()), LastRunTook: time.Duration(r.LastRunTook.Load()),
		LastRepair: unixTime(r.LastRepair.Load()), LastRepairRows: r.LastRepairRows.Load(),
	}
}

// unixTime is ns as a time; zero for 0.
func unixTime(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns)
}
