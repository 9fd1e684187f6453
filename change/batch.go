package change

import (
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/myusta/cdc/internal/schema"
)

// Op is what a change does to its row.
type Op uint8

// Change operations.
const (
	OpUpsert   Op = iota + 1 // insert or replace the row
	OpDelete                 // remove the row
	OpTruncate               // remove every row (only in a batch's log)
)

func (o Op) String() string {
	switch o {
	case OpUpsert:
		return "upsert"
	case OpDelete:
		return "delete"
	case OpTruncate:
		return "truncate"
	}
	return "unknown"
}

// Change is the newest state of one row. Values holds one entry per synced
// column, in the table's wire format (schema.Format: binary or text; nil is
// NULL); a delete carries only the key. Columns whose bit is set in Unchanged were not sent (an unchanged
// TOASTed value) and must keep the value the target already has.
type Change struct {
	Op         Op
	Values     [][]byte
	Unchanged  uint64
	LSN        pglogrepl.LSN // commit LSN of the source transaction; 0 for repairs
	CommitTime time.Time     // source commit time; zero for repairs
}

// Checkpoint is a position in the source's change stream that the chat
// database has fully applied: every transaction ending at or before LSN.
// Earlier versions committed a transaction too large for one batch in
// parts and recorded how far: then the first PartialChanges changes of the
// transaction whose commit record is at PartialXact are applied too. cdc
// reads such a checkpoint but no longer writes one.
type Checkpoint struct {
	LSN            pglogrepl.LSN
	PartialXact    pglogrepl.LSN
	PartialChanges int64
}

// Batch collects changes from consecutive source transactions for one chat
// transaction, keeping only the last change per key, and also every change
// in the order it came (the log), for when chat's constraints need them
// applied in source order. Values given to Add must come from Copy or
// NewValues so they stay valid until Reset.
type Batch struct {
	keys       []int // indexes of the key columns
	scratch    []byte
	ncols      int
	truncate   bool
	changes    []Change
	log        []Change
	index      map[string]int
	arena      arena
	Checkpoint Checkpoint // where the source stands once this batch commits
	// Open marks a batch that ends inside a source transaction: the sink
	// writes it into a chat transaction it leaves open, which the next
	// batches continue and the one that ends the source transaction
	// commits, so chat's readers see every source transaction whole.
	Open       bool
	Received   int       // changes added before compaction
	Started    time.Time // when the first change was added
	LastCommit time.Time // newest source commit time in the batch
	// FirstCommit is the source commit time of the oldest change in the
	// batch (zero when its changes carry none, e.g. repairs).
	FirstCommit time.Time
	// ReceiveDelay is the longest time between a transaction's source
	// commit and its arrival, among the batch's transactions.
	ReceiveDelay time.Duration
	// SendDelay is the part of ReceiveDelay spent before the source's
	// walsender sent the commit (decoding, waiting for the WAL flush), by
	// the source's clock: ReceiveDelay - SendDelay is transit and reading.
	SendDelay time.Duration
}

// NewBatch returns an empty batch for rows of ncols columns keyed by the
// columns at key.
func NewBatch(ncols int, key []int) *Batch {
	return &Batch{keys: key, ncols: ncols, index: make(map[string]int)}
}

// keyOf is the key of a row with values, valid until the next call.
func (b *Batch) keyOf(values [][]byte) []byte {
	if len(b.keys) == 1 {
		return values[b.keys[0]]
	}
	b.scratch = schema.AppendKey(b.scratch[:0], values, b.keys)
	return b.scratch
}

// NewValues returns a zeroed value slice for one row, owned by the batch.
func (b *Batch) NewValues() [][]byte { return b.arena.values(b.ncols) }

// Copy returns a copy of p owned by the batch.
func (b *Batch) Copy(p []byte) []byte { return b.arena.copy(p) }

// Size is the bytes of the values copied into the batch since Reset,
// replaced ones included: what the batch holds in memory for its rows.
func (b *Batch) Size() int { return b.arena.used }

// Add records c, replacing an earlier change of the same key. An update that
// does not carry some columns inherits them from an earlier upsert in the
// batch, so it only stays partial when the target must supply them.
func (b *Batch) Add(c Change) {
	if b.Received == 0 {
		b.Started = time.Now()
	}
	b.Received++
	if b.FirstCommit.IsZero() {
		b.FirstCommit = c.CommitTime
	}
	k := b.keyOf(c.Values)
	if i, ok := b.index[string(k)]; ok {
		prev := &b.changes[i]
		if c.Op == OpUpsert && c.Unchanged != 0 && prev.Op == OpUpsert {
			for col := 0; col < b.ncols; col++ {
				bit := uint64(1) << col
				if c.Unchanged&bit != 0 && prev.Unchanged&bit == 0 {
					c.Values[col] = prev.Values[col]
					c.Unchanged &^= bit
				}
			}
		}
		*prev = c
		b.log = append(b.log, c)
		return
	}
	b.index[string(k)] = len(b.changes)
	b.changes = append(b.changes, c)
	b.log = append(b.log, c)
}

// Truncate records that every target row is removed at this point: earlier
// changes in the batch no longer matter.
func (b *Batch) Truncate() {
	if b.Received == 0 {
		b.Started = time.Now()
	}
	b.Received++
	b.truncate = true
	b.changes = b.changes[:0]
	clear(b.index)
	b.log = append(b.log, Change{Op: OpTruncate})
}

// Truncates reports whether the batch empties the target table first.
func (b *Batch) Truncates() bool { return b.truncate }

// Changes returns the compacted changes, one per key.
func (b *Batch) Changes() []Change { return b.changes }

// Log returns every change added, in order, truncates included.
func (b *Batch) Log() []Change { return b.log }

// Len is the number of distinct keys in the batch.
func (b *Batch) Len() int { return len(b.changes) }

// Empty reports whether applying the batch would change no row.
func (b *Batch) Empty() bool { return len(b.changes) == 0 && !b.truncate }

// Reset empties the batch for reuse, keeping some of its memory.
func (b *Batch) Reset() {
	b.truncate = false
	clear(b.changes)
	b.changes = b.changes[:0]
	clear(b.log)
	b.log = b.log[:0]
	clear(b.index)
	b.arena.reset()
	b.Checkpoint = Checkpoint{}
	b.Open = false
	b.Received = 0
	b.Started = time.Time{}
	b.LastCommit = time.Time{}
	b.FirstCommit = time.Time{}
	b.ReceiveDelay = 0
	b.SendDelay = 0
}

// arena hands out byte and slice memory in large chunks, reused across
// batches, so that decoding a change costs no allocation of its own.
type arena struct {
	bytes  chunks[byte]
	slices chunks[[]byte]
	used   int // bytes copied since reset
}

func (a *arena) copy(p []byte) []byte {
	if p == nil {
		return nil
	}
	d := a.bytes.take(len(p), 256<<10)
	copy(d, p)
	a.used += len(p)
	return d
}

func (a *arena) values(n int) [][]byte { return a.slices.take(n, 8192) }

func (a *arena) reset() {
	a.used = 0
	a.bytes.reset()
	a.slices.reset()
}

// chunks is a bump allocator over a list of fixed-size chunks.
type chunks[T any] struct {
	list [][]T
	cur  int
}

// keepChunks bounds the memory a batch keeps across Reset.
const keepChunks = 8

// take returns n zeroed elements. Requests larger than a quarter chunk get
// their own allocation so one large value does not waste a chunk.
func (c *chunks[T]) take(n, size int) []T {
	if n > size/4 {
		return make([]T, n)
	}
	for c.cur < len(c.list) && cap(c.list[c.cur])-len(c.list[c.cur]) < n {
		c.cur++
	}
	if c.cur == len(c.list) {
		c.list = append(c.list, make([]T, 0, size))
	}
	s := c.list[c.cur]
	start := len(s)
	s = s[:start+n]
	c.list[c.cur] = s
	return s[start : start+n : start+n]
}

func (c *chunks[T]) reset() {
	for i := range c.list {
		clear(c.list[i])
		c.list[i] = c.list[i][:0]
	}
	if len(c.list) > keepChunks {
		clear(c.list[keepChunks:])
		c.list = c.list[:keepChunks]
	}
	c.cur = 0
}

// Transactions splits b's log into one batch per source transaction (by
// commit LSN), each compacted within itself. The batches share b's memory.
func (b *Batch) Transactions() []*Batch {
	var out []*Batch
	var cur *Batch
	for i := range b.log {
		c := b.log[i]
		if cur == nil || c.LSN != cur.log[len(cur.log)-1].LSN {
			cur = NewBatch(b.ncols, b.keys)
			out = append(out, cur)
		}
		if c.Op == OpTruncate {
			cur.Truncate()
			cur.log[len(cur.log)-1].LSN = c.LSN
			continue
		}
		c.Values = append([][]byte(nil), c.Values...) // Add may fill them in
		cur.Add(c)
	}
	return out
}
