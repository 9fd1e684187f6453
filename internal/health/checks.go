package health

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// Status is the overall verdict of the health model.
type Status string

// Health statuses: HEALTHY when every check passes, DEGRADED when some
// check warns, UNHEALTHY when some check fails.
const (
	Healthy   Status = "HEALTHY"
	Degraded  Status = "DEGRADED"
	Unhealthy Status = "UNHEALTHY"
)

// Level is the outcome of one check.
type Level string

// Check outcomes.
const (
	Pass Level = "pass"
	Warn Level = "warn"
	Fail Level = "fail"
)

// Check is the outcome of one named check.
type Check struct {
	Status         Level  `json:"status"`
	Message        string `json:"message"`
	Recommendation string `json:"recommendation,omitempty"`
}

// Health is the model's verdict: the status, every check by name, and the
// recommendations of the checks that did not pass ("All systems
// operational" when all did).
type Health struct {
	Status          Status           `json:"status"`
	Checks          map[string]Check `json:"checks"`
	Recommendations []string         `json:"recommendations"`
}

// AllOK is the only recommendation when every check passes.
const AllOK = "All systems operational"

// Names of the checks.
const (
	CheckStream      = "stream"
	CheckLag         = "lag"
	CheckErrorRate   = "error_rate"
	CheckFailures    = "consecutive_failures"
	CheckReconcile   = "reconcile"
	CheckPools       = "pools"
	CheckSlot        = "slot"
	CheckDatabases   = "databases"
	CheckDeadLetters = "dead_letters"
	CheckStandby     = "standby"
	CheckObjects     = "source_objects"
	CheckNotices     = "source_notices"
)

// readiness is what /readyz requires to pass.
var readiness = []string{CheckStandby, CheckStream, CheckLag, CheckDatabases, CheckFailures}

// Thresholds tune the checks.
type Thresholds struct {
	LagWarn           time.Duration // LAG_WARN: not ready, DEGRADED
	LagCritical       time.Duration // LAG_CRITICAL: UNHEALTHY
	SlotWALWarnBytes  int64         // SLOT_WAL_WARN_MB
	ReconcileInterval time.Duration // SYNC_INTERVAL_MINUTES
	// StallAfter is how long the source may stay disconnected (or the
	// daemon starting) before the stream check fails rather than warns.
	StallAfter time.Duration
}

// Fixed limits of the model.
const (
	maxConsecutiveFailures = 5
	errorRateTarget        = 0.001 // below: as intended
	errorRateWarn          = 0.01  // above: DEGRADED
	errorRateMinVolume     = 100   // rows + errors in the window before a rate means anything
	errorWindow            = 5 * time.Minute
	poolWarn               = 0.8
	reconcileWarn          = 0.8 // of the interval
)

// evaluate runs every check on st.
func evaluate(st *Stats, th Thresholds) Health {
	if st.Role == "standby" {
		// Waiting is this instance's job: healthy, but not ready (it
		// serves no traffic), and nothing else to judge.
		return Health{Status: Healthy, Checks: map[string]Check{CheckStandby: {Status: Warn,
			Message:        "standing by: " + st.ActiveInstance + " is active on this slot; this instance takes over when it stops",
			Recommendation: "none needed: this is a hot standby"}}, Recommendations: []string{AllOK}}
	}
	h := Health{Status: Healthy, Checks: map[string]Check{}}
	add := func(name string, c Check) {
		h.Checks[name] = c
		switch c.Status {
		case Fail:
			h.Status = Unhealthy
		case Warn:
			if h.Status == Healthy {
				h.Status = Degraded
			}
		}
	}
	add(CheckStream, streamCheck(st, th))
	add(CheckObjects, objectsCheck(st))
	if st.Stream.NoticeAt != nil {
		add(CheckNotices, noticeCheck(st))
	}
	add(CheckLag, lagCheck(st, th))
	add(CheckErrorRate, errorRateCheck(st))
	add(CheckFailures, failuresCheck(st))
	add(CheckReconcile, reconcileCheck(st))
	if len(st.Pools) > 0 {
		add(CheckPools, poolsCheck(st))
	}
	if len(st.Databases) > 0 {
		add(CheckDatabases, databasesCheck(st))
	}
	add(CheckDeadLetters, deadLettersCheck(st))
	if st.Slot != nil {
		add(CheckSlot, slotCheck(st.Slot, st.Stream, th))
	}
	for _, name := range slices.Sorted(maps.Keys(h.Checks)) {
		if r := h.Checks[name].Recommendation; h.Checks[name].Status != Pass && r != "" {
			h.Recommendations = append(h.Recommendations, name+": "+r)
		}
	}
	if len(h.Recommendations) == 0 {
		h.Recommendations = []string{AllOK}
	}
	return h
}

// ready reports whether /readyz passes, and if not, why.
func ready(h Health) (bool, string) {
	if c, ok := h.Checks[CheckObjects]; ok && c.Status == Fail {
		return false, CheckObjects + ": " + c.Message // a warning is history
	}
	for _, name := range readiness {
		if c, ok := h.Checks[name]; ok && c.Status != Pass {
			return false, name + ": " + c.Message
		}
	}
	return true, ""
}

func streamCheck(st *Stats, th Thresholds) Check {
	what := "replication stream"
	if st.Mode == "notify" {
		what = "notify listener"
	}
	switch {
	case st.Stream.Refused != "":
		return Check{Fail, what + " stopped: " + st.Stream.Refused, "fix what the error names (a table or privilege changed); cdc retries every RETRY_MAX_DELAY and resumes on its own"}
	case !st.started && st.disconnected < th.StallAfter:
		return Check{Warn, "starting: connecting to both databases and checking them", "wait; the log shows progress"}
	case !st.started:
		return Check{Fail, "not started after " + roundDur(st.disconnected) + ": a database is unreachable or a check is stuck",
			"read cdc's log (ERROR lines name the variable and the fix)"}
	case st.Stream.Connected:
		return Check{Status: Pass, Message: what + " connected"}
	case !st.Stream.EverConnected:
		return Check{Warn, what + " not following the source yet (first copy or compare, or waiting for the slot)", "wait; the log shows the first copy's progress"}
	case st.disconnected < th.StallAfter:
		return Check{Warn, what + " reconnecting (down " + roundDur(st.disconnected) + ")", "wait; cdc reconnects with backoff"}
	}
	return Check{Fail, what + " disconnected for " + roundDur(st.disconnected),
		"check that the source database is up and reachable (SOURCE_DATABASE_URL) and read cdc's log for the cause"}
}

// noticeShown is how long a warning from the source keeps its check at
// warn.
const noticeShown = 15 * time.Minute

// noticeCheck reports the last notice or warning the source sent on the
// replication connection; a warning stays a warning for noticeShown.
func noticeCheck(st *Stats) Check {
	s := st.Stream
	ago := roundDur(st.Now.Sub(*s.NoticeAt))
	if s.NoticeSeverity == "WARNING" && st.Now.Sub(*s.NoticeAt) < noticeShown {
		return Check{Warn, fmt.Sprintf("the source warned %s ago: %s", ago, s.Notice),
			"do what the source's warning says (cdc's log has it with its detail and hint); the stream goes on meanwhile"}
	}
	return Check{Status: Pass, Message: fmt.Sprintf("last %s from the source, %s ago: %s", strings.ToLower(s.NoticeSeverity), ago, s.Notice)}
}

func objectsCheck(st *Stats) Check {
	s := st.Stream
	if s.SourceObjects != "" {
		return Check{Fail, s.SourceObjects, "cdc restores its own publication or trigger and repairs the gap by itself when its role may; otherwise do what its ERROR line says (README: Living with backend migrations)"}
	}
	interval := time.Duration(st.Reconcile.IntervalMs) * time.Millisecond
	if at := s.SourceObjectsLastAt; at != nil && st.Now.Sub(*at) < repairSignal(interval) {
		return Check{Warn, fmt.Sprintf("put right and repaired; %s ago: %s", roundDur(st.Now.Sub(*at)), s.SourceObjectsLast),
			"find who changed cdc's objects on the source (a migration's DROP … CASCADE, a teardown, an operator) so it does not happen again"}
	}
	return Check{Status: Pass, Message: "publication or trigger, table and synced columns as cdc set them up"}
}

func lagCheck(st *Stats, th Thresholds) Check {
	lag := time.Duration(st.LagSeconds * float64(time.Second))
	msg := fmt.Sprintf("%s behind the source", roundDur(lag))
	if st.LagBytes != nil {
		msg += fmt.Sprintf(" (%s received, not yet in chat)", bytesString(*st.LagBytes))
	}
	switch {
	case lag > th.LagCritical:
		return Check{Fail, msg + "; over LAG_CRITICAL " + th.LagCritical.String(),
			"chat is not keeping up: check the chat database's load and locks and cdc's log; a larger BATCH_MAX_ROWS helps bulk changes"}
	case lag > th.LagWarn:
		return Check{Warn, msg + "; over LAG_WARN " + th.LagWarn.String(),
			"chat is falling behind: check the chat database's load and cdc's log; it catches up by itself once chat keeps pace"}
	}
	return Check{Status: Pass, Message: msg}
}

func errorRateCheck(st *Stats) Check {
	w := st.window
	total := w.rows + w.errors
	if total < errorRateMinVolume {
		return Check{Status: Pass, Message: fmt.Sprintf("%d errors, %d rows in the last %s (too few to rate)", w.errors, w.rows, roundDur(w.span))}
	}
	rate := float64(w.errors) / float64(total)
	msg := fmt.Sprintf("%.2f%% of %d writes failed in the last %s", 100*rate, total, roundDur(w.span))
	switch {
	case rate > errorRateWarn:
		return Check{Warn, msg + " (over 1%)", "see WARN/ERROR lines in cdc's log and the rows in sync_errors; fix the chat schema or the rows it refuses"}
	case rate > errorRateTarget:
		return Check{Status: Pass, Message: msg + " (above the 0.1% target)"}
	}
	return Check{Status: Pass, Message: msg}
}

func failuresCheck(st *Stats) Check {
	n := st.ConsecutiveFailures
	msg := fmt.Sprintf("%d consecutive failed chat writes", n)
	if n > maxConsecutiveFailures {
		return Check{Fail, msg, "chat refuses or cannot take writes: check that the chat database is up (CHAT_DATABASE_URL), not read-only and not out of disk; cdc keeps retrying"}
	}
	return Check{Status: Pass, Message: msg}
}

// repairSignal is how long health stays DEGRADED after a scheduled run
// repaired rows: ten minutes, or three intervals if longer.
func repairSignal(interval time.Duration) time.Duration { return max(10*time.Minute, 3*interval) }

func reconcileCheck(st *Stats) Check {
	r := st.Reconcile
	if r.Runs == 0 && r.Failures == 0 {
		return Check{Status: Pass, Message: "no run yet"}
	}
	interval := time.Duration(r.IntervalMs) * time.Millisecond
	took := time.Duration(r.LastRunMs) * time.Millisecond
	msg := fmt.Sprintf("%d runs, %d repairs; last took %s of a %s interval", r.Runs, r.Repairs, roundDur(took), roundDur(interval))
	switch {
	case r.LastRunFailed:
		return Check{Warn, msg + "; the last run failed", "read the reconciler's ERROR line in cdc's log; the next run retries"}
	case r.LastRepair != nil && st.Now.Sub(*r.LastRepair) < repairSignal(interval):
		return Check{Warn, fmt.Sprintf("%s; a scheduled run repaired %d rows %s ago that the change stream had not delivered", msg, r.LastRepairRows, roundDur(st.Now.Sub(*r.LastRepair))),
			"find what changed chat's synced columns outside cdc: another writer of chat's users table, a dropped or disabled publication or trigger on the source (cdc's log says), or a bug; cdc verify --full compares the whole table"}
	case interval > 0 && float64(took) >= reconcileWarn*float64(interval):
		return Check{Warn, msg + " (80% or more)", "raise SYNC_INTERVAL_MINUTES, or lower SYNC_WINDOW_MULTIPLIER, so a run fits well within the interval"}
	}
	return Check{Status: Pass, Message: msg}
}

func poolsCheck(st *Stats) Check {
	msg, worst := "", Pass
	rec := ""
	for _, p := range st.Pools {
		if msg != "" {
			msg += ", "
		}
		msg += fmt.Sprintf("%s %d/%d in use", p.Name, p.Acquired, p.Max)
		if p.Max > 0 && float64(p.Acquired) >= poolWarn*float64(p.Max) {
			worst = Warn
			v := "SOURCE_DB_POOL_SIZE"
			if p.Name == "chat" {
				v = "CHAT_DB_POOL_SIZE"
			}
			rec = "raise " + v + " (80% or more of the connections in use)"
		}
	}
	return Check{worst, msg, rec}
}

func databasesCheck(st *Stats) Check {
	msg := ""
	for _, d := range st.Databases {
		if d.Reachable {
			continue
		}
		if msg != "" {
			msg += "; "
		}
		msg += d.Name + " database unreachable: " + d.Error
	}
	if msg == "" {
		rt := ""
		for _, d := range st.Databases {
			rt += fmt.Sprintf(", %s %.1f ms", d.Name, d.RoundTripMs)
		}
		if rt != "" {
			rt = " (round trip" + rt[1:] + ")"
		}
		return Check{Status: Pass, Message: "both databases answer" + rt}
	}
	return Check{Fail, msg, "check that the database server is up and reachable from cdc (SOURCE_DATABASE_URL, CHAT_DATABASE_URL); cdc reconnects by itself"}
}

func deadLettersCheck(st *Stats) Check {
	d := st.DeadLetters
	if d.Unresolved == nil {
		return Check{Status: Pass, Message: fmt.Sprintf("%d since start", d.SinceStart)}
	}
	msg := fmt.Sprintf("%d unresolved in sync_errors, %d since start", *d.Unresolved, d.SinceStart)
	if *d.Unresolved > 0 {
		return Check{Warn, msg, "chat refused these rows, so they differ from the source: SELECT id, error_type, user_id, message FROM sync_errors WHERE NOT resolved; fix the cause, then reconcile"}
	}
	return Check{Status: Pass, Message: msg}
}

func slotCheck(s *SlotStats, stream StreamStats, th Thresholds) Check {
	switch {
	case s.CheckedAt == nil:
		return Check{Status: Pass, Message: "not read yet"}
	case !s.Exists && (!stream.EverConnected || stream.Connected):
		// Not created yet, or created since the last reading: a slot in
		// use cannot be dropped.
		return Check{Status: Pass, Message: "slot " + s.Name + " not seen yet (created by the stream)"}
	case !s.Exists:
		return Check{Warn, "slot " + s.Name + " does not exist", "it was dropped: cdc recreates it and copies the table again when the stream reconnects; read cdc's log if this persists"}
	case s.WALStatus == "lost":
		return Check{Fail, "slot " + s.Name + " was invalidated (wal_status lost)", "cdc recreates the slot and copies the table again on its next connect; raise max_slot_wal_keep_size if this repeats"}
	case s.WALStatus == "unreserved":
		return Check{Fail, "slot " + s.Name + " is about to be invalidated (wal_status unreserved, " + bytesString(s.RetainedBytes) + " retained)",
			"cdc is too far behind for max_slot_wal_keep_size: make sure it is streaming and chat keeps up, or raise max_slot_wal_keep_size"}
	case s.RetainedBytes > th.SlotWALWarnBytes:
		return Check{Warn, "slot " + s.Name + " retains " + bytesString(s.RetainedBytes) + " of WAL on the source (over SLOT_WAL_WARN_MB)",
			"cdc is behind or was stopped: check the stream and chat; the WAL is released as cdc confirms"}
	}
	msg := "slot " + s.Name + " retains " + bytesString(s.RetainedBytes) + " (" + s.WALStatus + ")"
	if s.Promotion != "" {
		msg += "; " + s.Promotion
	}
	return Check{Status: Pass, Message: msg}
}

func roundDur(d time.Duration) string {
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return d.Round(100 * time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

func bytesString(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
