// Package health watches a running `cdc run` and reports on it: a health
// model (HEALTHY, DEGRADED, UNHEALTHY from named checks, each failing check
// with a recommendation), the /stats document, Prometheus metrics and the
// HTTP server that serves them together with a small status page.
//
// A Monitor reads the daemon's parts (the stream's or listener's stats, the
// sink's, the reconciler's, the slot watcher and the pools) when asked, and
// is told about each committed batch through ObserveBatch, which the sink
// and the notify source call. It samples a few values every second
// (connection changes, throughput every 10 s) and probes both databases
// every few seconds, so the HTTP handlers never wait on a database.
package health
