package replication

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
)

// Streamed transactions (pgoutput protocol 2, streaming 'on'): the source's
// walsender sends a transaction larger than its logical_decoding_work_mem
// in blocks while it runs, instead of spilling it to disk and sending it
// after its commit. Each block's messages go to the transaction's spool;
// at its stream commit the spool is replayed through the same begin,
// change and commit path as a transaction sent whole (batching, Open
// batches, backpressure and skipping on restart unchanged), from the
// reader's loop a slice at a time; at its stream abort the spool goes.
//
// Applied ahead: a streamed transaction whose first block arrives while
// nothing else waits to be written is also applied as it arrives, into the
// chat transaction Open batches keep open, so chat's writes overlap the
// source's decoding; its stream commit then commits that chat transaction.
// Whatever must reach chat before it (another transaction's commit), a
// rolled-back savepoint or its abort rolls that chat transaction back
// (Sink.Discard), and the spool, which holds the whole transaction
// regardless, is replayed at its commit as above. Chat commits nothing of
// it before its commit arrives, so its readers see it whole or not at all.
//
// Nothing about confirmation changes: a streamed transaction's commit lies
// beyond every position received before it, and a new session receives
// every transaction not committed in chat again from its start.

// streams is the reader's state of streamed transactions.
type streams struct {
	open   map[uint32]*spool // by top-level xid, from first block to commit or abort
	block  *spool            // the transaction whose block is being received
	replay *replaying        // the committed transaction being applied
	ahead  *spool            // the transaction applied as it arrives, if any
	msg    []byte            // a message of it in protocol 1 form
	// counts are Stats' inserts, updates and deletes when ahead began: an
	// abandoned transaction's changes are counted again when it replays.
	counts [3]int64
}

// replaying is a streamed transaction being applied.
type replaying struct {
	sp     *spool
	r      *spoolReader
	commit pglogrepl.CommitMessage
	sentAt time.Time
}

// replayStep is how many spooled messages a turn of the reader's loop
// applies (fewer when the batch fills).
const replayStep = 256

// streamed handles a protocol 2 message that belongs to a streamed
// transaction and reports whether m was one.
func (r *reader) streamed(m []byte, sentAt time.Time) (bool, error) {
	switch m[0] {
	case 'S':
		return true, r.streamStart(m)
	case 'E':
		r.st.block = nil
		return true, nil
	case 'c':
		return true, r.streamCommit(m, sentAt)
	case 'A':
		return true, r.streamAbort(m)
	}
	if r.st.block == nil {
		return false, nil
	}
	// Inside a block every message names its (sub)transaction after its kind.
	if len(m) < 5 {
		return true, fmt.Errorf("streamed %q message of %d bytes", m[0], len(m))
	}
	if err := r.st.block.add(binary.BigEndian.Uint32(m[1:5]), m[0], m[5:]); err != nil {
		return true, err
	}
	if r.st.block != r.st.ahead {
		return true, nil
	}
	r.st.msg = append(append(r.st.msg[:0], m[0]), m[5:]...)
	return true, r.plain(r.st.msg, sentAt)
}

func (r *reader) streamStart(m []byte) error {
	var s pglogrepl.StreamStartMessageV2
	if err := s.DecodeV2(m[1:], false); err != nil {
		return fmt.Errorf("decode stream start: %w", err)
	}
	sp := r.st.open[s.Xid]
	if sp == nil {
		if s.FirstSegment != 1 {
			return fmt.Errorf("the source streams more of transaction %d, whose first block this session did not receive", s.Xid)
		}
		if r.st.open == nil {
			r.st.open = map[uint32]*spool{}
		}
		sp = newSpool(s.Xid, r.s.opts.SpoolDir)
		r.st.open[s.Xid] = sp
		if r.st.ahead == nil && r.idle() && !r.openTx {
			// Nothing else waits to be written: its batches go to chat
			// as they fill. Its commit position is not known yet.
			r.st.ahead = sp
			r.tx = sourceTx{open: true}
			st := &r.s.Stats
			r.st.counts = [3]int64{st.Inserts.Load(), st.Updates.Load(), st.Deletes.Load()}
			r.s.log.Debug("applying a streamed transaction ahead of its commit", "xid", s.Xid)
		}
	}
	r.st.block = sp
	return nil
}

// abandonAhead rolls back what chat holds of the transaction applied
// ahead, if any (after the batch in flight): it is replayed from its
// spool at its commit instead.
func (r *reader) abandonAhead(why string) error {
	if r.st.ahead == nil {
		return nil
	}
	if r.inflight != nil {
		if err := r.handle(<-r.done); err != nil {
			return err
		}
	}
	r.s.log.Debug("no longer applying a streamed transaction ahead of its commit; it is applied from its spool at its commit", "why", why, "spooled_bytes", r.st.ahead.size)
	r.st.ahead = nil
	st := &r.s.Stats
	for i, n := range []*atomic.Int64{&st.Inserts, &st.Updates, &st.Deletes} {
		n.Store(r.st.counts[i]) // only this goroutine counts, and only its changes since
	}
	r.cur.Reset() // its changes alone: it began when nothing else waited
	r.openTx = false
	r.tx = sourceTx{}
	r.s.sink.Discard()
	r.publishPending()
	return nil
}

func (r *reader) streamAbort(m []byte) error {
	var a pglogrepl.StreamAbortMessageV2
	if err := a.DecodeV2(m[1:], false); err != nil {
		return fmt.Errorf("decode stream abort: %w", err)
	}
	sp := r.st.open[a.Xid]
	if sp == nil {
		return nil
	}
	if sp == r.st.ahead {
		if err := r.abandonAhead("it rolled back (to a savepoint)"); err != nil {
			return err
		}
	}
	if a.SubXid != a.Xid {
		return sp.abortSub(a.SubXid)
	}
	sp.close()
	delete(r.st.open, a.Xid)
	return nil
}

// streamCommit begins applying a streamed transaction: at once when it was
// applied before a restart (nothing to replay), else from the next turn of
// the loop on.
func (r *reader) streamCommit(m []byte, sentAt time.Time) error {
	var c pglogrepl.StreamCommitMessageV2
	if err := c.DecodeV2(m[1:], false); err != nil {
		return fmt.Errorf("decode stream commit: %w", err)
	}
	sp := r.st.open[c.Xid]
	if sp == nil {
		return fmt.Errorf("the source committed streamed transaction %d, whose first block this session did not receive", c.Xid)
	}
	delete(r.st.open, c.Xid)
	commit := pglogrepl.CommitMessage{CommitLSN: c.CommitLSN, TransactionEndLSN: c.TransactionEndLSN, CommitTime: c.CommitTime}
	if sp == r.st.ahead {
		if c.CommitLSN >= r.resume.LSN && c.CommitLSN != r.resume.PartialXact {
			r.st.ahead = nil
			sp.close()
			r.tx.final, r.tx.commit = c.CommitLSN, c.CommitTime
			r.commit(&commit, sentAt)
			return nil
		}
		// Chat committed it before the restart: what it wrote again goes.
		if err := r.abandonAhead("it was applied before the restart"); err != nil {
			return err
		}
	} else if err := r.abandonAhead("another transaction committed first"); err != nil {
		return err
	}
	r.begin(&pglogrepl.BeginMessage{FinalLSN: c.CommitLSN, CommitTime: c.CommitTime, Xid: c.Xid})
	if r.tx.skip {
		sp.close()
		r.commit(&commit, sentAt)
		return nil
	}
	rd, err := sp.replay()
	if err != nil {
		sp.close()
		return err
	}
	if sp.file != nil {
		r.s.log.Info("applying a large source transaction the source streamed before its commit", "xact_lsn", c.CommitLSN, "spooled_bytes", sp.size)
	}
	r.st.replay = &replaying{sp: sp, r: rd, commit: commit, sentAt: sentAt}
	return nil
}

// replayNext applies the next slice of the streamed transaction being
// replayed, ending it with its commit after the last message.
func (r *reader) replayNext() error {
	rp := r.st.replay
	r.lastMsg = time.Now() // the connection is quiet because we are not reading
	for i := 0; i < replayStep && !r.full(); i++ {
		m, err := rp.r.next()
		if errors.Is(err, io.EOF) {
			r.st.replay = nil
			rp.sp.close()
			r.commit(&rp.commit, rp.sentAt)
			return nil
		}
		if err != nil {
			return err
		}
		if err := r.plain(m, rp.sentAt); err != nil {
			return err
		}
	}
	return nil
}

// closeStreams drops every spool when the session ends: the next session
// receives those transactions again.
func (r *reader) closeStreams() {
	for _, sp := range r.st.open {
		sp.close()
	}
	if r.st.replay != nil {
		r.st.replay.sp.close()
	}
	r.st = streams{} // the sink's open transaction, if any, goes with the session (Discard)
}
