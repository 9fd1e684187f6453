// Package health watches a running `cdc run` and reports on it: a health
// model (HEALTHY, DEGRADED, UNHEALTHY from named checks, each failing check
// with a recommendation), the /stats document, Prometheus metrics and the
// HTTP server that serves them together with a small status page.
//
// A Monitor reads the daemon's parts when asked, each through a small
// interface declared here (Source, Slot, Writes, Reconciles,
// ObjectsReporter) that cmd/cdc implements over the part's counters, so
// this package knows no source, sink or reconciler and has no mode
// switch; it is
// is told about each committed batch through ObserveBatch, which the sink
// and the notify source call. It samples a few values every second
// (connection changes, throughput every 10 s) and probes both databases
// every few seconds, so the HTTP handlers never wait on a database.
//
// OnChange reports each change of the overall status; a Webhook
// (ALERT_WEBHOOK_URL) turns them into Slack-compatible messages, queued
// and sent on a goroutine of its own so that nothing waits on it.
package health
