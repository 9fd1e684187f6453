package health

import (
	"sync/atomic"
	"time"
)

// Parts for tests: counters the tests set, reported as the real parts'
// reports are (cmd/cdc/reports.go).

type fakeStream struct {
	Streaming, Notify, Connected atomic.Bool
	Applied, Position, Received  atomic.Uint64
	Pending, Reconnects          atomic.Int64
	CatchUps                     atomic.Int64
}

func (f *fakeStream) SourceStatus() SourceStatus {
	st := SourceStatus{Connected: f.Streaming.Load(), Reconnects: f.Reconnects.Load()}
	if f.Notify.Load() {
		st.Connected = f.Connected.Load() && f.CatchUps.Load() > 0
	} else {
		st.Positions = &Positions{Applied: f.Applied.Load(), Received: f.Received.Load(), Position: f.Position.Load()}
	}
	if ns := f.Pending.Load(); ns != 0 {
		st.Pending = time.Unix(0, ns)
	}
	return st
}

type fakeWrites struct{ Failures, DeadLetters, Failing atomic.Int64 }

func (f *fakeWrites) WriteCounts() WriteCounts {
	return WriteCounts{Failures: f.Failures.Load(), DeadLetters: f.DeadLetters.Load(), Failing: f.Failing.Load()}
}

type fakeReconciles struct {
	Runs, FullRuns, Failures, Missing, LastRun, LastRunTook atomic.Int64
}

func (f *fakeReconciles) ReconcileCounts() ReconcileCounts {
	c := ReconcileCounts{Runs: f.Runs.Load(), FullRuns: f.FullRuns.Load(), Failures: f.Failures.Load(), Missing: f.Missing.Load(),
		LastRunTook: time.Duration(f.LastRunTook.Load())}
	if ns := f.LastRun.Load(); ns != 0 {
		c.LastRun = time.Unix(0, ns)
	}
	return c
}
