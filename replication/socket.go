package replication

import (
	"context"
	"time"
)

// Resting. At a steady trickle of small transactions the walsender sends
// each one as it commits, and a reader blocked on the socket wakes for every
// one of them: thousands of wake-ups a second, each costing the process,
// the Go scheduler and the kernel far more than decoding the message (on a
// busy machine that load, not the work, is what delays the source's
// walsender). But while a batch lingers (BATCH_MAX_WAIT) or is being
// written, nothing read now could reach chat sooner. So then the reader
// takes what has arrived, and once the socket is empty it sleeps until the
// batch is due, the write finishes or a status update is due (at most
// BATCH_MAX_WAIT), and reads everything that came meanwhile in one go
// before the batch is handed on. With nothing in hand it blocks on the
// socket as before, so a lone change is read at once; a backlog seldom
// rests, since its socket is seldom empty.

// It needs Linux (SIOCINQ): elsewhere unreadBytes returns nil and the
// reader lingers without resting (socket_other.go). A second trick, raising
// the socket's receive low-water mark (SO_RCVLOWAT) during a rest, saved
// context switches but moved neither latency nor CPU beyond this machine's
// noise (BENCHMARKS.md, session 6, L), so it was removed.

// longAgo is a read deadline that has passed: a receive returns what is
// buffered above the socket and times out instead of reading it.
var longAgo = time.Unix(1, 0)

// holding reports that a batch lingers or is being written, so that the
// reader may rest when the socket is empty.
func (r *reader) holding() bool {
	return r.unread != nil && r.s.opts.BatchMaxWait > 0 && (r.inflight != nil || r.cur.Received > 0)
}

// nextRead chooses the next receive's deadline. peek means it may only
// take what is buffered above the socket (a batch is held and the socket
// has not been asked yet); after a look found bytes it reads them even if
// the batch is due; otherwise it blocks until the batch is due or a status
// update is (readDeadline).
func (r *reader) nextRead(interval time.Duration) (deadline time.Time, peek bool) {
	fill := r.fill
	r.fill = false
	switch {
	case fill:
		return r.lastStatus.Add(interval), false
	case r.holding():
		return longAgo, true
	default:
		r.catchUpUntil = time.Time{}
		return r.readDeadline(interval), false
	}
}

// look runs when everything buffered above the socket has been taken: it
// asks the socket whether more has arrived (then the next receive reads
// it) or not (then the reader rests).
func (r *reader) look() {
	n, err := r.unread()
	switch {
	case err != nil:
		r.s.log.Debug("cannot ask the replication socket for unread bytes; reading without rests", "err", err)
		r.unread, r.catchUpUntil = nil, time.Time{}
	case n > 0:
		r.fill = true
	default:
		r.emptied, r.catchUpUntil = true, time.Time{}
	}
}

// rest sleeps until the batch in flight is committed, ctx ends, or until
// (the lingering batch's due time or the next status update), for at most
// BATCH_MAX_WAIT.
func (r *reader) rest(ctx context.Context, until time.Time) error {
	r.emptied = false
	if !r.holding() {
		return nil // the batch in flight was committed meanwhile: block on the socket
	}
	r.s.Stats.Rests.Add(1)
	start := time.Now()
	if limit := start.Add(r.s.opts.BatchMaxWait); limit.Before(until) {
		until = limit
	}
	t := time.NewTimer(time.Until(until))
	defer t.Stop()
	var err error
	select {
	case a := <-r.done:
		err = r.handle(a)
	case <-t.C:
	case <-ctx.Done():
	}
	r.catchUpUntil = time.Now().Add(r.s.opts.BatchMaxWait)
	if r.cur.Received == 0 && r.unread != nil {
		if n, uerr := r.unread(); uerr == nil && n > 0 {
			r.arrivedBy = start
		}
	}
	return err
}

// catchingUp reports that a rest ended and the socket has not yet been
// found empty since.
func (r *reader) catchingUp() bool {
	return !r.catchUpUntil.IsZero() && time.Now().Before(r.catchUpUntil)
}

// added runs after a change the walsender sent at sentAt is added. The
// first change of a batch read after a rest may have waited in the socket
// since the rest began, and the batch lingers from then, as it would had
// the reader been awake; and the first change's lead (see lingerFor) is
// noted.
func (r *reader) added(sentAt time.Time) {
	if r.cur.Received == 1 {
		r.lead = max(0, sentAt.Sub(r.txCommit))
		if !r.arrivedBy.IsZero() && r.arrivedBy.Before(r.cur.Started) {
			r.cur.Started = r.arrivedBy
		}
	}
	if r.cur.Received > 0 {
		r.arrivedBy = time.Time{}
	}
}
