package replication

import (
	"context"
	"sync"
	"time"
)

// onStandbyNudged runs create, the creation of the slot. On a standby a
// logical slot becomes consistent only once the primary logs a snapshot
// of its running transactions, which it does every 15 s when busy and
// not at all when idle: cdc asks the primary for one
// (pg_log_standby_snapshot, 16+) until create returns, when it has the
// primary's DSN.
func (s *Stream) onStandbyNudged(ctx context.Context, create func() error) error {
	if !s.onStandby {
		return create()
	}
	if s.opts.Primary == nil {
		s.log.Info("creating the slot on a standby: it waits for the primary's next snapshot of running transactions (up to 15 s on a busy primary; set SOURCE_PRIMARY_URL and cdc asks for one)")
		return create()
	}
	nctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(200 * time.Millisecond)
		defer t.Stop()
		for {
			if _, err := s.opts.Primary.Exec(nctx, "SELECT pg_log_standby_snapshot()"); err != nil && nctx.Err() == nil {
				s.log.Warn("cannot ask the primary for a snapshot of running transactions (the slot on the standby waits for the primary's own, up to 15 s on a busy primary)", "err", err)
				return
			}
			select {
			case <-nctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	err := create()
	stop()
	wg.Wait()
	return err
}
