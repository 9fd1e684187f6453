package health

import "time"

// StateChange is a change of the overall health status (HEALTHY,
// DEGRADED, UNHEALTHY) as the Monitor saw it.
type StateChange struct {
	At       time.Time
	From, To Status
	// Health is the verdict with the new status: every check, and the
	// recommendations of those that did not pass.
	Health Health
}

// OnChange has the monitor call f each time the overall status changes.
// Run evaluates the model every second, right after sampling, and calls f
// from its own goroutine: f must return at once (Webhook.Notify only
// queues). The first evaluation after OnChange is the baseline and is not
// reported, so a start reports its first change (usually DEGRADED while
// starting → HEALTHY). There is one callback; a later call replaces it,
// nil removes it.
func (m *Monitor) OnChange(f func(StateChange)) {
	if f == nil {
		m.onChange.Store(nil)
		return
	}
	m.onChange.Store(&f)
}

// watchState evaluates the model as of now and reports a change of its
// status to the OnChange callback. Only Run's goroutine calls it.
func (m *Monitor) watchState(now time.Time) {
	f := m.onChange.Load()
	if f == nil {
		m.lastStatus = ""
		return
	}
	h := m.Stats(now).HealthStatus
	prev := m.lastStatus
	m.lastStatus = h.Status
	if prev == "" || prev == h.Status {
		return
	}
	(*f)(StateChange{At: now, From: prev, To: h.Status, Health: h})
}
