// Package change holds what flows between cdc's sources and its sink, and
// the one interface between them. The whole data path:
//
//	source (PostgreSQL)
//	  → replication.Stream (pgoutput)  or  replication.Notify (LISTEN/NOTIFY)
//	  → Batch of Change, with the Checkpoint it reaches  ─┐
//	  → replication's first copy: CopyOut parts           ├→ Sink (sink.Sink) → chat (PostgreSQL)
//	  → reconcile.Reconciler: keys and a Fetch            ─┘
//	  ← Sink.Checkpoint: the position chat has committed, which the stream
//	    confirms to the slot (and never anything beyond it)
//
// Values travel in the table's wire format (schema.Format): binary or
// text, one entry per synced column in configured order, nil for NULL.
package change

import (
	"context"
	"errors"
)

// Sink is where every source hands its work: the stream's and the
// listener's batches, the first copy, the reconciler's repairs. It is the
// only writer of chat's table, and it reports back how far chat has
// committed. sink.Sink implements it.
type Sink interface {
	// Apply writes b in one chat transaction with its Checkpoint; an
	// Open batch (a source transaction larger than one batch) is left in
	// an open chat transaction the next batches continue, so chat's
	// readers see every source transaction whole.
	Apply(ctx context.Context, b *Batch) error
	// LoadSnapshot writes the first copy (parts together write every
	// source row under one snapshot) and stores cp with it.
	LoadSnapshot(ctx context.Context, parts []CopyOut, cp Checkpoint) (int64, error)
	// Repair makes chat's rows of keys equal to the source rows fetch
	// reads, newer than anything any writer has committed.
	Repair(ctx context.Context, keys [][]byte, fetch Fetch) (RepairResult, error)
	// Checkpoint is the position chat has committed; ok is false before
	// the first copy stored one.
	Checkpoint(ctx context.Context) (cp Checkpoint, ok bool, err error)
	// Check prepares every statement the sink runs, so that a table it
	// cannot write fails at start with the statement named.
	Check(ctx context.Context) error
	// Discard rolls back what an unfinished source transaction's batches
	// wrote (its source transaction comes again from its start).
	Discard()
	// Durable is the latest checkpoint whose chat commit is on disk, the
	// furthest the stream may confirm to the slot (with asynchronous
	// commits it trails what Apply committed). probe lets it ask chat;
	// ErrCommitsLost says chat lost commits and the stream must resume
	// from the stored checkpoint.
	Durable(ctx context.Context, probe bool) (Checkpoint, error)
}

// ErrCommitsLost reports that chat lost commits it had acknowledged (a
// crash with asynchronous commit): the stream must resume from the stored
// checkpoint, which the slot has not been confirmed beyond.
var ErrCommitsLost = errors.New("the chat database lost asynchronously committed batches (it crashed or was restarted in immediate mode); resuming from the checkpoint it kept")

// CheckError is a statement a database refused to prepare: a schema or
// privilege problem no retry fixes.
type CheckError struct {
	What string // the statement's purpose
	Err  error
}

// Error names the statement and the refusal.
func (e *CheckError) Error() string { return e.What + ": " + e.Err.Error() }

// Unwrap returns the database's error.
func (e *CheckError) Unwrap() error { return e.Err }

// Timeline is the source's timeline as a stream last saw it, and whether
// a promotion of its standby keeps the slot (replication.Promotion).
type Timeline struct {
	ID    int32
	Keeps bool
}
