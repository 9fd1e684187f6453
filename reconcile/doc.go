// Package reconcile compares the chat table with the source table and
// repairs the differences through the sink: a windowed compare over
// recently updated rows (inside cdc run, every SYNC_INTERVAL_MINUTES), a
// full compare by key-range checksums computed inside each database (every
// FULL_RECONCILE_INTERVAL, and on demand), and Verify, which reports
// without writing.
//
// Repairs never trust what the comparison read: the sink re-reads each
// differing key on both sides after taking the writer lock, so a repair
// never writes a version older than one the stream already wrote, and never
// brings back a row deleted on the source.
package reconcile
