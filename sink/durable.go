package sink

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"

	"github.com/myusta/cdc/change"
)

// Asynchronous commits (Options.AsyncCommit), as PostgreSQL's own apply
// worker makes them: the stream's chat transactions commit with
// synchronous_commit=off, so COMMIT returns before its WAL is on disk, and
// the stream confirms to the slot only checkpoints whose commit chat has
// flushed. The checkpoint row commits in the same transaction as its
// changes, so a commit a chat crash loses takes its checkpoint with it:
// the restart resumes from the last checkpoint chat kept, and the slot,
// confirmed no further than what is on disk, still holds everything after.
//
// Where a commit's WAL ends is read without a round trip of its own: every
// stream write opens with its writer lock statement, which also returns
// chat's WAL insert and flush positions. On the writer connection the
// insert position at the start of one transaction lies beyond the commit
// record of every transaction committed on it before; once the flush
// position reaches it, those commits are durable. When the writer is idle,
// Durable asks on the same connection.
//
// The connection proves the server did not restart in between: a commit's
// fate is read only on the connection that made it. When that connection
// is lost with commits whose fate is unknown, the next connection reads the
// checkpoint row: if chat kept it, the commits are there (a server that
// crashed recovered them from disk; one that did not will flush them);
// if not, chat lost them (change.ErrCommitsLost) and the stream starts again from
// what chat kept.

// pendingCommit is a committed checkpoint not yet known to be on disk.
type pendingCommit struct {
	cp  change.Checkpoint
	end pglogrepl.LSN // a chat WAL position past its commit record; 0 until read
}

// durability tracks which committed checkpoints are on disk in chat.
type durability struct {
	mu      sync.Mutex
	pending []pendingCommit // in commit order
	durable change.Checkpoint
}

// known notes a checkpoint read from chat or stored with a synchronous
// commit: durable when sync, else pending until chat shows it flushed.
func (d *durability) known(cp change.Checkpoint, sync bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.pending = d.pending[:0]
	if sync {
		d.durable = cp
		return
	}
	d.pending = append(d.pending, pendingCommit{cp: cp})
}

// committed notes a commit of cp: on disk when sync, else pending.
func (d *durability) committed(cp change.Checkpoint, sync bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if sync && len(d.pending) == 0 {
		d.durable = cp
		return
	}
	d.pending = append(d.pending, pendingCommit{cp: cp})
}

// observe takes chat's WAL insert and flush positions read on the
// connection every pending commit was made on (or, after reconnecting, on
// the connection that found the last of them in chat): every commit before
// the read ends before insert, and those ending at or before flush are on
// disk.
func (d *durability) observe(insert, flush pglogrepl.LSN) {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for i := range d.pending {
		p := &d.pending[i]
		if p.end == 0 {
			p.end = insert
		}
		if p.end <= flush {
			d.durable, n = p.cp, i+1
		}
	}
	d.pending = append(d.pending[:0], d.pending[n:]...)
}

// last returns the latest commit of unknown fate, if any.
func (d *durability) last() (change.Checkpoint, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.pending) == 0 {
		return change.Checkpoint{}, false
	}
	return d.pending[len(d.pending)-1].cp, true
}

// get returns the latest durable checkpoint and whether any commit waits.
func (d *durability) get() (change.Checkpoint, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.durable, len(d.pending) > 0
}

// walSQL reads chat's WAL positions in a stream write's first statement.
const walSQL = "pg_current_wal_insert_lsn()::text, pg_current_wal_flush_lsn()::text"

// observeRow takes the WAL positions from the last two columns of row.
func (d *durability) observeRow(row [][]byte) error {
	if len(row) < 2 {
		return fmt.Errorf("read chat WAL positions: %d columns", len(row))
	}
	insert, err := pglogrepl.ParseLSN(string(row[len(row)-2]))
	if err != nil {
		return fmt.Errorf("read chat WAL insert position: %w", err)
	}
	flush, err := pglogrepl.ParseLSN(string(row[len(row)-1]))
	if err != nil {
		return fmt.Errorf("read chat WAL flush position: %w", err)
	}
	d.observe(insert, flush)
	return nil
}

// Durable returns the latest checkpoint known to be on disk in chat: with
// synchronous commits every committed one, with asynchronous commits (see
// above) the latest whose commit chat has flushed. probe asks chat when a
// commit's fate is unknown (the stream does so while its writer is idle);
// change.ErrCommitsLost says chat lost commits and the stream must start again
// from the stored checkpoint.
func (s *Sink) Durable(ctx context.Context, probe bool) (change.Checkpoint, error) {
	cp, waiting := s.dur.get()
	if !waiting || !probe {
		return cp, nil
	}
	if !s.mu.TryLock() {
		return cp, nil // a write (or repair) is under way: ask later, never wait
	}
	defer s.mu.Unlock()
	if s.tx.open {
		return cp, nil // the next write reads the positions
	}
	conn, err := s.writer(ctx)
	if err != nil {
		if errors.Is(err, change.ErrCommitsLost) {
			return cp, err
		}
		return cp, fmt.Errorf("read chat's flushed WAL position: %w", err)
	}
	var insert, flush pglogrepl.LSN
	if err := conn.QueryRow(ctx, "SELECT "+walSQL).Scan(&insert, &flush); err != nil {
		s.dropBroken()
		return cp, fmt.Errorf("read chat's flushed WAL position: %w", err)
	}
	s.dur.observe(insert, flush)
	cp, _ = s.dur.get()
	return cp, nil
}

// settleOnConnect runs when a new writer connection is opened while
// commits of unknown fate wait (their connection was lost): chat's
// checkpoint row says whether it kept them.
func (s *Sink) settleOnConnect(ctx context.Context, c *pgx.Conn) error {
	want, waiting := s.dur.last()
	if !waiting {
		return nil
	}
	var have change.Checkpoint
	var insert, flush pglogrepl.LSN
	err := c.QueryRow(ctx, `SELECT COALESCE(c.lsn, '0/0')::text, COALESCE(c.partial_xact_lsn, '0/0')::text, COALESCE(c.partial_changes, 0), `+walSQL+`
FROM (SELECT) AS one LEFT JOIN cdc_checkpoint AS c ON c.slot_name = $1`, s.opts.Slot).Scan(&have.LSN, &have.PartialXact, &have.PartialChanges, &insert, &flush)
	if err != nil {
		return fmt.Errorf("read checkpoint after reconnecting: %w", err)
	}
	if before(have, want) {
		s.log.Warn("the chat database lost batches it had committed asynchronously (a crash or an immediate restart); the stream starts again from the checkpoint chat kept, which the slot still holds everything after",
			"kept_lsn", have.LSN, "lost_up_to_lsn", want.LSN)
		s.dur.known(have, false)
		return change.ErrCommitsLost
	}
	s.dur.observe(insert, flush)
	return nil
}

// before reports that a precedes b in the stream.
func before(a, b change.Checkpoint) bool {
	if a.LSN != b.LSN {
		return a.LSN < b.LSN
	}
	if (a.PartialXact == 0) != (b.PartialXact == 0) {
		return a.PartialXact == 0 // at a boundary, before the next transaction's part
	}
	return a.PartialChanges < b.PartialChanges
}
