package change

import (
	"context"
	"io"
	"time"
)

// CopyOut writes source rows, in PostgreSQL COPY format (binary or text,
// the table's format) with the synced columns in order, to w. It may be
// called more than once: each call writes the same rows.
type CopyOut func(ctx context.Context, w io.Writer) error

// Fetch reads the current source rows of keys (binary key values), each as
// binary values of the synced columns in order; keys without a row are left
// out of the map.
type Fetch func(ctx context.Context, keys [][]byte) (map[string][][]byte, error)

// RepairResult counts what Repair found and did.
type RepairResult struct {
	Missing int // rows chat lacked: inserted
	Stale   int // rows that differed: updated
	Extra   int // rows the source does not have: deleted
	Same    int // rows already equal (the stream had caught up)
	Dead    int // repairs the chat database refused: in sync_errors
}

// Repairs is the number of rows written.
func (r RepairResult) Repairs() int { return r.Missing + r.Stale + r.Extra - r.Dead }

// Add sums two results.
func (r RepairResult) Add(o RepairResult) RepairResult {
	return RepairResult{r.Missing + o.Missing, r.Stale + o.Stale, r.Extra + o.Extra, r.Same + o.Same, r.Dead + o.Dead}
}

// BatchInfo describes one committed batch.
type BatchInfo struct {
	Received    int  // changes received for the batch, before compaction
	Upserts     int  // upserts after compaction (refused ones included)
	Deletes     int  // deletes after compaction
	Truncate    bool // the table was emptied first
	DeadLetters int  // changes refused and recorded in sync_errors
	// Latency is from the source commit (notify mode: the notification) of
	// the batch's oldest change to the chat commit; 0 when unknown.
	Latency time.Duration
	Took    time.Duration // time spent writing, retries included
}
