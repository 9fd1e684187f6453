package replication

import "time"

// lingering reports that the current batch, complete but small, may wait
// for more changes (lingerFor from its first change) although the sink is
// idle. It does only while the load would keep a writer of one chat
// transaction per source transaction busy all the time (busy): then a
// chat transaction (and a wake-up of both processes) per change is the
// load that delays changes on a busy machine, not the wait. At lower rates
// a change that finds the writer idle is written at once.
func (r *reader) lingering() bool {
	return r.busy() && !r.full() && time.Since(r.cur.Started) < r.lingerFor()
}

// pace is what the reader knows of the load: the average gap between the
// source commits of consecutive transactions and the average time the
// writer takes per batch (moving averages, the last ~10 weighing most).
type pace struct {
	gap, write time.Duration
	lastCommit time.Time // source commit time of the last transaction
	sent       time.Time // when the batch in flight was handed to the writer
}

// newPace starts from an idle load.
func newPace() pace { return pace{gap: time.Second} }

// ewma moves avg a tenth of the way to x.
func ewma(avg, x time.Duration) time.Duration { return avg + (x-avg)/10 }

// committed notes a source transaction that committed at t (source clock).
func (p *pace) committed(t time.Time) {
	if !p.lastCommit.IsZero() && t.After(p.lastCommit) {
		p.gap = ewma(p.gap, min(t.Sub(p.lastCommit), time.Second))
	}
	p.lastCommit = t
}

// written notes that the batch handed on at p.sent is done.
func (p *pace) written() {
	if !p.sent.IsZero() {
		p.write = ewma(p.write, time.Since(p.sent))
	}
}

// busy reports that writing each transaction alone would keep the writer
// busy all the time: transactions arrive less than one write apart. (At
// half busy, 500 tps with ~1 ms writes here, lingering cost 7 ms of p50
// for CPU the machine could spare: BENCHMARKS.md, session 9.)
func (r *reader) busy() bool { return r.pace.write >= r.pace.gap }

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
	if r.cur.Received == 1 && !r.tx.commit.IsZero() {
		r.lead = max(0, sentAt.Sub(r.tx.commit))
	}
}
