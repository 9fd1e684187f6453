package replication

import (
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
)

// begin starts a source transaction: skipped whole when the checkpoint
// is past it, in part when an earlier version applied it in part.
func (r *reader) begin(b *pglogrepl.BeginMessage) {
	r.inTx, r.txFinal, r.txCommit, r.txChanges = true, b.FinalLSN, b.CommitTime, 0
	r.skipTx = b.FinalLSN < r.resume.LSN
	r.skipN = 0
	if b.FinalLSN == r.resume.PartialXact {
		r.skipN = r.resume.PartialChanges
		r.s.log.Info("resuming a transaction applied in part before the restart", "xact_lsn", b.FinalLSN, "changes_applied", r.skipN)
	}
	if r.skipTx {
		r.skipped++
	} else if r.skipped > 0 {
		r.s.log.Info("skipped transactions already applied before the restart", "transactions", r.skipped, "checkpoint", r.resume.LSN)
		r.skipped = 0
	}
}

// commit ends a source transaction: the batch reaches its end.
func (r *reader) commit(c *pglogrepl.CommitMessage, sentAt time.Time) {
	r.inTx = false
	if r.skipTx {
		return
	}
	r.lastEnd = max(r.lastEnd, c.TransactionEndLSN)
	r.cur.LastCommit = c.CommitTime
	r.cur.ReceiveDelay = max(r.cur.ReceiveDelay, time.Since(c.CommitTime))
	r.cur.SendDelay = max(r.cur.SendDelay, sentAt.Sub(c.CommitTime))
}

// skipping counts a change of the current transaction and reports
// whether it was applied before the restart.
func (r *reader) skipping() bool {
	r.txChanges++
	return r.skipTx || r.txChanges <= r.skipN
}

// change adds an insert, update or delete to the batch.
func (r *reader) change(m []byte, sentAt time.Time) error {
	if r.skipping() {
		return nil
	}
	ours, err := r.dec.change(m, r.cur, r.txFinal, r.txCommit)
	if err != nil {
		return fmt.Errorf("decode change at %s: %w", r.txFinal, err)
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
			r.s.log.Warn("source table truncated; emptying the chat table", "lsn", r.txFinal)
			r.cur.Truncate()
			r.added(sentAt)
			r.s.Stats.Truncates.Add(1)
		}
	}
	return nil
}
