package health

import (
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// histograms are fed by ObserveBatch.
type histograms struct {
	latency       prometheus.Histogram
	batchSize     prometheus.Histogram
	applyDuration prometheus.Histogram
}

// newRegistry builds the registry /metrics serves: the batch histograms,
// the monitor's state, the pools and the Go runtime and process metrics.
func (m *Monitor) newRegistry() *prometheus.Registry {
	m.hist = histograms{
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "cdc", Name: "apply_latency_seconds",
			Help:    "Source commit (notify mode: notification) of each batch's oldest change to its chat commit.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300},
		}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "cdc", Name: "batch_changes",
			Help:    "Changes received per batch committed in chat, before compaction.",
			Buckets: prometheus.ExponentialBuckets(1, 4, 9),
		}),
		applyDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "cdc", Name: "batch_apply_duration_seconds",
			Help:    "Time to write one batch to chat, retries included.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 10, 60},
		}),
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(m.hist.latency, m.hist.batchSize, m.hist.applyDuration, stateCollector{m},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc("cdc_"+name, help, labels, nil)
}

var (
	descInfo          = desc("info", "Always 1; the mode label says how cdc reads the source.", "mode")
	descHealth        = desc("health_status", "Verdict of the health model: 0 HEALTHY, 1 DEGRADED, 2 UNHEALTHY.")
	descCheck         = desc("health_check_status", "Outcome of one health check: 0 pass, 1 warn, 2 fail.", "check")
	descReady         = desc("ready", "1 while /readyz answers 200.")
	descConnected     = desc("source_connected", "1 while the replication stream (notify mode: the listener) is connected.")
	descApplied       = desc("changes_applied_total", "Changes committed in chat by the stream or listener, by operation.", "op")
	descBatches       = desc("batches_total", "Batches committed in chat by the stream or listener.")
	descLagSeconds    = desc("lag_seconds", "Age of the oldest change not yet committed in chat (from its source commit; notify mode: its notification); 0 when none is pending.")
	descLagBytes      = desc("lag_bytes", "WAL received from the slot and not yet committed in chat.")
	descAppliedLSN    = desc("applied_lsn", "End LSN of the last source transaction committed in chat, as a number.")
	descReconnects    = desc("reconnects_total", "Connections to the source lost and re-established.")
	descWriteFailures = desc("write_failures_total", "Failed chat write attempts; every retry counts.")
	descConsecutive   = desc("consecutive_failures", "Failed attempts of the chat write in progress.")
	descDead          = desc("dead_letters_total", "Changes chat refused and cdc recorded in sync_errors, since start.")
	descUnresolved    = desc("dead_letters_unresolved", "Unresolved rows in sync_errors at the last probe.")
	descRecRuns       = desc("reconcile_runs_total", "Reconcile runs, by kind (window or full).", "kind")
	descRecFailures   = desc("reconcile_failures_total", "Reconcile runs that failed.")
	descRecRepairs    = desc("reconcile_repairs_total", "Rows repaired by the reconciler, by difference (missing, stale, extra).", "kind")
	descRecChecked    = desc("reconcile_rows_checked_total", "Rows the reconciler compared, both sides.")
	descRecLast       = desc("reconcile_last_duration_seconds", "Duration of the last reconcile run.")
	descRecLastTime   = desc("reconcile_last_run_timestamp_seconds", "End of the last reconcile run, in unix seconds.")
	descSlotRetained  = desc("slot_retained_bytes", "WAL the replication slot keeps on the source (current position − restart_lsn).")
	descSlotLag       = desc("slot_lag_bytes", "Source WAL position − the slot's confirmed_flush_lsn.")
	descSlotSafe      = desc("slot_safe_wal_bytes", "WAL that may still be written before max_slot_wal_keep_size invalidates the slot.")
	descSlotActive    = desc("slot_active", "1 while a process streams from the slot.")
	descDBUp          = desc("database_up", "1 when the database answered the last health probe.", "database")
	descPoolAcquired  = desc("pool_acquired_conns", "Pool connections in use.", "pool")
	descPoolIdle      = desc("pool_idle_conns", "Idle pool connections.", "pool")
	descPoolTotal     = desc("pool_total_conns", "Open pool connections.", "pool")
	descPoolMax       = desc("pool_max_conns", "Pool size limit (SOURCE_DB_POOL_SIZE, CHAT_DB_POOL_SIZE).", "pool")
	descPoolAcquires  = desc("pool_acquires_total", "Connections acquired from the pool.", "pool")
	descPoolWait      = desc("pool_acquire_wait_seconds_total", "Time spent acquiring connections from the pool.", "pool")
	descPoolEmpty     = desc("pool_empty_acquires_total", "Acquisitions that waited because no connection was idle.", "pool")
	descPoolNew       = desc("pool_new_conns_total", "Connections the pool opened.", "pool")
)

var allDescs = []*prometheus.Desc{descInfo, descHealth, descCheck, descReady, descConnected, descApplied, descBatches,
	descLagSeconds, descLagBytes, descAppliedLSN, descReconnects, descWriteFailures, descConsecutive, descDead, descUnresolved,
	descRecRuns, descRecFailures, descRecRepairs, descRecChecked, descRecLast, descRecLastTime,
	descSlotRetained, descSlotLag, descSlotSafe, descSlotActive, descDBUp,
	descPoolAcquired, descPoolIdle, descPoolTotal, descPoolMax, descPoolAcquires, descPoolWait, descPoolEmpty, descPoolNew}

// stateCollector turns one Stats snapshot per scrape into metrics.
type stateCollector struct{ m *Monitor }

// Describe implements prometheus.Collector.
func (c stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range allDescs {
		ch <- d
	}
}

var levelValue = map[Level]float64{Pass: 0, Warn: 1, Fail: 2}
var statusValue = map[Status]float64{Healthy: 0, Degraded: 1, Unhealthy: 2}

// Collect implements prometheus.Collector.
func (c stateCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.m.Stats(time.Now())
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v, labels...)
	}
	gauge(descInfo, 1, st.Mode)
	gauge(descHealth, statusValue[st.HealthStatus.Status])
	for name, chk := range st.HealthStatus.Checks {
		gauge(descCheck, levelValue[chk.Status], name)
	}
	gauge(descReady, boolValue(st.Ready))
	gauge(descConnected, boolValue(st.IsRealTimeActive))
	counter(descApplied, float64(st.Applied.Upserts), "upsert")
	counter(descApplied, float64(st.Applied.Deletes), "delete")
	counter(descApplied, float64(st.Applied.Truncates), "truncate")
	counter(descBatches, float64(st.Applied.Batches))
	gauge(descLagSeconds, st.LagSeconds)
	if st.LagBytes != nil {
		gauge(descLagBytes, float64(*st.LagBytes))
	}
	if st.lsn != 0 {
		gauge(descAppliedLSN, float64(st.lsn))
	}
	counter(descReconnects, float64(st.Stream.Reconnects))
	counter(descWriteFailures, float64(st.Errors-st.DeadLetters.SinceStart))
	gauge(descConsecutive, float64(st.ConsecutiveFailures))
	counter(descDead, float64(st.DeadLetters.SinceStart))
	if u := st.DeadLetters.Unresolved; u != nil {
		gauge(descUnresolved, float64(*u))
	}
	r := st.Reconcile
	counter(descRecRuns, float64(r.Runs-r.FullRuns), "window")
	counter(descRecRuns, float64(r.FullRuns), "full")
	counter(descRecFailures, float64(r.Failures))
	counter(descRecRepairs, float64(r.Missing), "missing")
	counter(descRecRepairs, float64(r.Stale), "stale")
	counter(descRecRepairs, float64(r.Extra), "extra")
	counter(descRecChecked, float64(r.RowsChecked))
	if r.LastRun != nil {
		gauge(descRecLast, float64(r.LastRunMs)/1000)
		gauge(descRecLastTime, float64(r.LastRun.UnixNano())/1e9)
	}
	if s := st.Slot; s != nil && s.CheckedAt != nil && s.Exists {
		gauge(descSlotRetained, float64(s.RetainedBytes))
		gauge(descSlotLag, float64(s.LagBytes))
		gauge(descSlotActive, boolValue(s.Active))
		if s.SafeWALBytes != nil {
			gauge(descSlotSafe, float64(*s.SafeWALBytes))
		}
	}
	for _, d := range st.Databases {
		gauge(descDBUp, boolValue(d.Reachable), d.Name)
	}
	if p := c.m.parts.Load(); p != nil {
		collectPool(ch, "source", p.SourcePool)
		collectPool(ch, "chat", p.ChatPool)
	}
}

// collectPool reports pgxpool's statistics.
func collectPool(ch chan<- prometheus.Metric, name string, pool *pgxpool.Pool) {
	if pool == nil {
		return
	}
	s := pool.Stat()
	for _, g := range []struct {
		d *prometheus.Desc
		v float64
	}{{descPoolAcquired, float64(s.AcquiredConns())}, {descPoolIdle, float64(s.IdleConns())},
		{descPoolTotal, float64(s.TotalConns())}, {descPoolMax, float64(s.MaxConns())}} {
		ch <- prometheus.MustNewConstMetric(g.d, prometheus.GaugeValue, g.v, name)
	}
	for _, c := range []struct {
		d *prometheus.Desc
		v float64
	}{{descPoolAcquires, float64(s.AcquireCount())}, {descPoolWait, s.AcquireDuration().Seconds()},
		{descPoolEmpty, float64(s.EmptyAcquireCount())}, {descPoolNew, float64(s.NewConnsCount())}} {
		ch <- prometheus.MustNewConstMetric(c.d, prometheus.CounterValue, c.v, name)
	}
}

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
