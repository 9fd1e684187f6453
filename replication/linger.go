package replication

import "time"

// lingering reports that the current batch, complete but small, may wait
// for more changes (lingerFor from its first change) although the sink is
// idle: at a trickle of single-row transactions, writing each at once
// costs a chat transaction (and a wake-up of both processes) per change,
// and that load, not the wait, is what delays changes on a busy machine.
func (r *reader) lingering() bool {
	return r.cur.Received < r.s.opts.BatchMaxRows && time.Since(r.cur.Started) < r.lingerFor()
}

// lingerFor is how long the current batch may wait for more changes:
// BATCH_MAX_WAIT less what the walsender already made its first change
// wait, so that change waits for company at most BATCH_MAX_WAIT after its
// source commit (transit aside). A change the source sent late (its
// walsender short of CPU, say) is already at the tail of the latency;
// holding it further would only lengthen that tail. Both times of the lead
// are the source's, so clock skew between the hosts does not enter.
func (r *reader) lingerFor() time.Duration {
	return max(0, r.s.opts.BatchMaxWait-r.lead)
}

// readDeadline is when a blocked receive must return: at the next status
// update, when the lingering batch is due, or when the idle writer's last
// commits are due to be checked for durability (settle).
func (r *reader) readDeadline(interval time.Duration) time.Time {
	d := r.lastStatus.Add(interval)
	if r.inflight == nil && r.durable < r.committed.LSN {
		if due := r.lastProbe.Add(probeEvery); due.Before(d) {
			d = due
		}
	}
	if r.inflight == nil && !r.tx.open && r.cur.Received > 0 {
		if due := r.cur.Started.Add(r.lingerFor()); due.Before(d) {
			d = due
		}
	}
	return d
}

// added runs after a change the walsender sent at sentAt is added: the
// first change's lead (see lingerFor) is noted.
func (r *reader) added(sentAt time.Time) {
	if r.cur.Received == 1 {
		r.lead = max(0, sentAt.Sub(r.tx.commit))
	}
}
