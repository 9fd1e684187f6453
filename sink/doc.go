// Package sink is the single writer of chat's table: it implements
// change.Sink, the one boundary every source hands its work to.
//
// One writer connection, with its statements prepared (Check), applies
// each batch set-based (unnest of binary or text arrays, or COPY into a
// staging table for large batches) in one chat transaction together with
// the batch's checkpoint row, under the slot's writer lock. A source
// transaction larger than one batch stays in an open chat transaction the
// next batches continue (Batch.Open). When chat's own constraints refuse
// the compacted batch, it is replayed in source order, per source
// transaction, then row by row; a row chat still refuses is bisected out
// into sync_errors and the rest commits. Repairs and column backfills take
// the writer lock before they read the source, so they never write over a
// newer version. The first copy (LoadSnapshot) COPYs in parallel parts,
// or merges through a staging table when chat already has rows.
package sink
