package replication

import (
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
)

// begin starts a source transaction: skipped whole when the checkpoint
// is past it, in part when an earlier version applied it in part.
func (r *reader) begin(b *pglogrepl.BeginMessage) {
	r.tx.open, r.tx.final, r.tx.commit, r.tx.changes = true, b.FinalLSN, b.CommitTime, 0
	r.tx.skip = b.FinalLSN < r.resume.LSN
	r.tx.skipN = 0
	if b.FinalLSN == r.resume.PartialXact {
		r.tx.skipN = r.resume.PartialChanges
		r.s.log.Info("resuming a transaction applied in part before the restart", "xact_lsn", b.FinalLSN, "changes_applied", r.tx.skipN)
	}
	if r.tx.skip {
		r.skipped++
	} else if r.skipped > 0 {
		r.s.log.Info("skipped transactions already applied before the restart", "transactions", r.skipped, "checkpoint", r.resume.LSN)
		r.skipped = 0
	}
}

// commit ends a source transaction: the batch reaches its end.
func (r *reader) commit(c *pglogrepl.CommitMessage, sentAt time.Time) {
	r.tx.open = false
	if r.tx.skip {
		return
	}
	r.lastEnd = max(r.lastEnd, c.TransactionEndLSN)
	r.pace.committed(c.CommitTime)
	r.cur.LastCommit = c.CommitTime
	r.cur.ReceiveDelay = max(r.cur.ReceiveDelay, time.Since(c.CommitTime))
	r.cur.SendDelay = max(r.cur.SendDelay, sentAt.Sub(c.CommitTime))
}

// skipping counts a change of the current transaction and reports
// whether it was applied before the restart.
func (r *reader) skipping() bool {
	r.tx.changes++
	return r.tx.skip || r.tx.changes <= r.tx.skipN
}

// change adds an insert, update or delete to the batch.
func (r *reader) change(m []byte, sentAt time.Time) error {
	if r.skipping() {
		return nil
	}
	ours, err := r.dec.change(m, r.cur, r.tx.final, r.tx.commit)
	if err != nil {
		return fmt.Errorf("decode change at %s: %w", r.tx.final, err)
	}
	r.added(sentAt)
	if !ours {
		return nil
	}
	st := &r.s.Stats
	switch m[0] {
	case 'I':
		st.Inserts.Add(1)
	case 'U':
		st.Updates.Add(1)
	default:
		st.Deletes.Add(1)
	}
	return nil
}

// truncate empties the chat table in the batch when the source's was.
func (r *reader) truncate(m []byte, sentAt time.Time) error {
	if r.skipping() {
		return nil
	}
	var t pglogrepl.TruncateMessage
	if err := t.Decode(m[1:]); err != nil {
		return fmt.Errorf("decode truncate: %w", err)
	}
	for _, id := range t.RelationIDs {
		if _, ok := r.dec.rels[id]; ok {
			r.s.log.Warn("source table truncated; emptying the chat table", "lsn", r.tx.final)
			r.cur.Truncate()
			r.added(sentAt)
			r.s.Stats.Truncates.Add(1)
		}
	}
	return nil
}

func (r *reader) copyData(data []byte) error {
	if len(data) == 0 {
		return nil
	}
	switch data[0] {
	case pglogrepl.PrimaryKeepaliveMessageByteID:
		k, err := pglogrepl.ParsePrimaryKeepaliveMessage(data[1:])
		if err != nil {
			return fmt.Errorf("parse keepalive: %w", err)
		}
		r.received = max(r.received, k.ServerWALEnd)
		if r.idle() {
			// Everything the server sent before this keepalive is applied;
			// its WAL end may be confirmed so a quiet table pins no WAL.
			r.idleLSN = max(r.idleLSN, k.ServerWALEnd)
			r.publishPosition()
		}
		r.replyDue = r.replyDue || k.ReplyRequested
	case pglogrepl.XLogDataByteID:
		x, err := pglogrepl.ParseXLogData(data[1:])
		if err != nil {
			return fmt.Errorf("parse xlogdata: %w", err)
		}
		r.received = max(r.received, x.WALStart)
		if len(x.WALData) > 0 {
			return r.message(x.WALData, x.ServerTime)
		}
	}
	return nil
}

// message handles one pgoutput message, which the walsender sent at sentAt.
func (r *reader) message(m []byte, sentAt time.Time) error {
	if ok, err := r.streamed(m, sentAt); ok {
		return err
	}
	return r.plain(m, sentAt)
}

// plain handles a message in protocol 1 form: one of a transaction sent
// whole, or of a streamed one applied ahead or replayed.
func (r *reader) plain(m []byte, sentAt time.Time) error {
	switch m[0] {
	case 'B':
		var b pglogrepl.BeginMessage
		if err := b.Decode(m[1:]); err != nil {
			return fmt.Errorf("decode begin: %w", err)
		}
		// It committed before the transaction applied ahead, if any.
		if err := r.abandonAhead("another transaction committed first"); err != nil {
			return err
		}
		r.begin(&b)
	case 'C':
		var c pglogrepl.CommitMessage
		if err := c.Decode(m[1:]); err != nil {
			return fmt.Errorf("decode commit: %w", err)
		}
		r.commit(&c, sentAt)
	case 'R':
		var rel pglogrepl.RelationMessage
		if err := rel.Decode(m[1:]); err != nil {
			return fmt.Errorf("decode relation: %w", err)
		}
		return r.dec.relation(&rel)
	case 'I', 'U', 'D':
		return r.change(m, sentAt)
	case 'T':
		return r.truncate(m, sentAt)
	case 'Y', 'O', 'M':
		// Type, origin and logical messages carry nothing to apply.
	default:
		return errors.New("unknown pgoutput message type " + string(m[0]))
	}
	return nil
}
