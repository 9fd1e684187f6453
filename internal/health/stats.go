package health

import (
	"time"
)

// Stats is the /stats document. Its first fields keep the names of the
// replaced service's getSyncStats(), so dashboards built on it keep working.
type Stats struct {
	// TotalSynced counts rows written to chat since start: changes applied
	// by the stream (or listener) and rows repaired by the reconciler.
	TotalSynced int64 `json:"totalSynced"`
	// LastSyncTime is the later of the last batch committed in chat and the
	// end of the last reconcile run (null before either).
	LastSyncTime *time.Time `json:"lastSyncTime"`
	// LastSyncDuration is how long that batch or run took, in milliseconds.
	LastSyncDuration int64 `json:"lastSyncDuration"`
	// Errors counts failed chat write attempts (every retry) and dead
	// letters since start.
	Errors int64 `json:"errors"`
	// ConsecutiveFailures counts the failed attempts of the chat write in
	// progress; 0 once it succeeds.
	ConsecutiveFailures int64 `json:"consecutiveFailures"`
	// IsRealTimeActive reports that the replication stream (notify mode:
	// the listener) is connected.
	IsRealTimeActive bool `json:"isRealTimeActive"`
	// IsSyncInProgress reports that changes are received and not yet
	// committed in chat.
	IsSyncInProgress bool   `json:"isSyncInProgress"`
	HealthStatus     Health `json:"healthStatus"`

	Mode string `json:"mode"` // replication or notify
	// Role is "active", or "standby" while another cdc holds the leader
	// lock on the same slot (ActiveInstance names it).
	Role           string `json:"role"`
	ActiveInstance string `json:"activeInstance,omitempty"`
	Ready          bool   `json:"ready"` // what /readyz answers
	// AppliedLSN is the end of the last source transaction committed in
	// chat; null in notify mode and before the first commit.
	AppliedLSN *string `json:"appliedLsn"`
	// LagBytes is WAL received from the slot and not yet committed in
	// chat; null in notify mode.
	LagBytes *int64 `json:"lagBytes"`
	// LagSeconds is how long the oldest change not yet in chat has waited
	// since its source commit (notify mode: since its notification); 0
	// when nothing is pending, however quiet the source.
	LagSeconds float64 `json:"lagSeconds"`

	Applied     AppliedStats    `json:"applied"`
	Stream      StreamStats     `json:"stream"`
	Reconcile   ReconcileStats  `json:"reconcile"`
	DeadLetters DeadLetterStats `json:"deadLetters"`
	Slot        *SlotStats      `json:"slot,omitempty"` // replication mode only
	Pools       []PoolStats     `json:"pools"`
	Databases   []DatabaseStats `json:"databases"`
	// Throughput is rows applied per 10-second interval, oldest first,
	// over the last 10 minutes.
	Throughput []Sample `json:"throughput"`

	StartedAt     time.Time `json:"startedAt"`
	UptimeSeconds float64   `json:"uptimeSeconds"`
	Now           time.Time `json:"now"`

	// What the checks need beyond the document.
	started      bool          // the daemon's parts are attached
	lsn          uint64        // AppliedLSN as a number
	disconnected time.Duration // how long the source has not been connected
	window       window        // error-rate window
}

// AppliedStats counts what the stream (or listener) committed in chat.
type AppliedStats struct {
	Upserts   int64 `json:"upserts"`
	Deletes   int64 `json:"deletes"`
	Truncates int64 `json:"truncates"`
	Batches   int64 `json:"batches"`
	// LatencyMs is source commit → chat commit of the last batch's oldest
	// change (notify mode: from its notification).
	LatencyMs int64 `json:"latencyMs"`
}

// StreamStats describes the change source's connection.
type StreamStats struct {
	// Connected reports that the replication stream is streaming (notify
	// mode: the listener is connected and its first catch-up is done).
	Connected bool `json:"connected"`
	// Since is when the connection last came up or went down.
	Since         *time.Time `json:"since"`
	EverConnected bool       `json:"everConnected"`
	Reconnects    int64      `json:"reconnects"`
	// Refused is the error no retry fixes that stops the stream (a
	// statement a database refuses), "" when there is none.
	Refused string `json:"refused,omitempty"`
	// Notice is the last notice or warning the source sent on the
	// replication connection (its message, detail and hint), with its
	// severity and time.
	Notice         string     `json:"notice,omitempty"`
	NoticeSeverity string     `json:"noticeSeverity,omitempty"`
	NoticeAt       *time.Time `json:"noticeAt,omitempty"`
	// SourceObjects is what is wrong now with cdc's objects on the source
	// (publication, notify trigger, the table and its synced columns), ""
	// when nothing is.
	SourceObjects string `json:"sourceObjects,omitempty"`
	// SourceObjectsLast is what was last found wrong with them, and
	// SourceObjectsLastAt when.
	SourceObjectsLast   string     `json:"sourceObjectsLast,omitempty"`
	SourceObjectsLastAt *time.Time `json:"sourceObjectsLastAt,omitempty"`
}

// ReconcileStats describes the reconciler's runs since start.
type ReconcileStats struct {
	Runs          int64      `json:"runs"`
	FullRuns      int64      `json:"fullRuns"`
	Failures      int64      `json:"failures"`
	LastRun       *time.Time `json:"lastRun"`
	LastRunMs     int64      `json:"lastRunDurationMs"`
	LastRunFailed bool       `json:"lastRunFailed"`
	IntervalMs    int64      `json:"intervalMs"`
	RowsChecked   int64      `json:"rowsChecked"`
	Repairs       int64      `json:"repairs"`
	Missing       int64      `json:"missing"`
	Stale         int64      `json:"stale"`
	Extra         int64      `json:"extra"`
	// LastRepair is when a scheduled run last repaired rows, and
	// LastRepairRows how many.
	LastRepair     *time.Time `json:"lastRepair,omitempty"`
	LastRepairRows int64      `json:"lastRepairRows,omitempty"`
}

// DeadLetterStats describes the rows chat refused (sync_errors).
type DeadLetterStats struct {
	SinceStart int64 `json:"sinceStart"`
	// Unresolved is the number of unresolved rows in sync_errors; null
	// until the chat database has answered once.
	Unresolved *int64 `json:"unresolved"`
	// Recent are the newest rows of sync_errors, without their payload.
	Recent []DeadLetter `json:"recent"`
}

// DeadLetter is one row of sync_errors, without its payload.
type DeadLetter struct {
	ID        int64     `json:"id"`
	ErrorType string    `json:"errorType"`
	UserID    string    `json:"userId"`
	Message   string    `json:"message"`
	LSN       string    `json:"lsn,omitempty"`
	Resolved  bool      `json:"resolved"`
	CreatedAt time.Time `json:"createdAt"`
}

// SlotStats is the replication slot as pg_replication_slots last showed it.
type SlotStats struct {
	Name          string     `json:"name"`
	Exists        bool       `json:"exists"`
	Active        bool       `json:"active"`
	WALStatus     string     `json:"walStatus"`
	RetainedBytes int64      `json:"retainedBytes"`
	LagBytes      int64      `json:"lagBytes"`     // current WAL − confirmed_flush_lsn
	SafeWALBytes  *int64     `json:"safeWalBytes"` // null: no max_slot_wal_keep_size
	CheckedAt     *time.Time `json:"checkedAt"`
	// Promotion says what a promotion of a standby of the source would
	// cost: continuing from the synced slot, or a new slot and a copy.
	Promotion string `json:"promotion,omitempty"`
}

// PoolStats is one connection pool's use.
type PoolStats struct {
	Name     string `json:"name"` // source or chat
	Acquired int32  `json:"acquired"`
	Idle     int32  `json:"idle"`
	Total    int32  `json:"total"`
	Max      int32  `json:"max"`
}

// DatabaseStats is the outcome of the last probe of one database.
type DatabaseStats struct {
	Name      string    `json:"name"` // source or chat
	Reachable bool      `json:"reachable"`
	Error     string    `json:"error,omitempty"`
	CheckedAt time.Time `json:"checkedAt"`
	// RoundTripMs is the probe's ping on an idle pooled connection, in
	// milliseconds: the network round trip between cdc and the database,
	// which every chat commit (beside chat: every source read) waits for.
	RoundTripMs float64 `json:"roundTripMs"`
}

// Sample is the work done in one throughput interval.
type Sample struct {
	At      time.Time `json:"t"`       // end of the interval
	Seconds float64   `json:"seconds"` // its length
	Rows    int64     `json:"rows"`    // rows applied (stream and repairs)
	Errors  int64     `json:"errors"`  // failed write attempts and dead letters
}

// window is the error-rate window: rows applied and errors in the last
// errorWindow.
type window struct {
	rows, errors int64
	span         time.Duration
}
