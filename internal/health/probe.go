package health

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/myusta/cdc/internal/logging"
)

// Probe timing: each database is asked every probeEvery and must answer
// within probeTimeout.
const (
	probeEvery   = 5 * time.Second
	probeTimeout = 3 * time.Second
	recentErrors = 10
)

// probeState is what the last probe found.
type probeState struct {
	databases       []DatabaseStats
	unresolved      int64
	unresolvedKnown bool
	recent          []DeadLetter
}

// probeLoop probes both databases once the parts are attached and every
// probeEvery after, until ctx ends.
func (m *Monitor) probeLoop(ctx context.Context) {
	select {
	case <-ctx.Done():
		return
	case <-m.attached:
	}
	t := time.NewTicker(probeEvery)
	defer t.Stop()
	for {
		m.probeOnce(ctx, m.parts.Load())
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// probeOnce pings the source and reads sync_errors in chat (which proves
// chat answers). A database that does not answer keeps the dead-letter
// figures of its last answer.
func (m *Monitor) probeOnce(ctx context.Context, p *Parts) {
	var dbs []DatabaseStats
	if p.SourcePool != nil {
		dbs = append(dbs, m.probeDB(ctx, "source", p.SourcePool, nil))
	}
	var unresolved int64
	var recent []DeadLetter
	if p.ChatPool != nil {
		dbs = append(dbs, m.probeDB(ctx, "chat", p.ChatPool, func(ctx context.Context) (err error) {
			unresolved, recent, err = readDeadLetters(ctx, p.ChatPool)
			return err
		}))
	}
	if ctx.Err() != nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, d := range m.probe.databases {
		for _, n := range dbs {
			if d.Name == n.Name && d.Reachable != n.Reachable {
				if n.Reachable {
					m.log.Info("database answers again", "database", n.Name)
				} else {
					m.log.Warn("database does not answer the health probe", "database", n.Name, "err", n.Error)
				}
			}
		}
	}
	m.probe.databases = dbs
	if p.ChatPool != nil && dbs[len(dbs)-1].Reachable {
		m.probe.unresolved, m.probe.unresolvedKnown, m.probe.recent = unresolved, true, recent
	}
}

// probeDB pings pool (if any), timing the round trip, then runs then (if any),
// all within probeTimeout.
func (m *Monitor) probeDB(ctx context.Context, name string, pool *pgxpool.Pool, then func(ctx context.Context) error) DatabaseStats {
	pctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	var err error
	var rt time.Duration
	if pool != nil {
		start := time.Now()
		err = pool.Ping(pctx)
		rt = time.Since(start)
	}
	d := DatabaseStats{Name: name, Reachable: err == nil, CheckedAt: time.Now(), RoundTripMs: float64(rt.Microseconds()) / 1000}
	if err == nil && then != nil {
		err = then(pctx)
		d.Reachable = err == nil
	}
	switch {
	case err == nil:
	case timedOut(pctx, err):
		d.Error = fmt.Sprintf("no answer within %s", probeTimeout)
	default:
		// Driver errors name host, port, user and database, never the
		// password; mask anything that looks like one all the same.
		d.Error = logging.RedactDSN(userinfo.ReplaceAllString(err.Error(), "${1}:xxxxx@"))
	}
	return d
}

// userinfo is user:password@ in a URL anywhere in a text.
var userinfo = regexp.MustCompile(`([a-zA-Z][a-zA-Z0-9+.-]*://[^:@/\s]*):[^@\s]*@`)

// timedOut reports whether err means the probe got no answer in time.
func timedOut(ctx context.Context, err error) bool {
	return errors.Is(err, context.DeadlineExceeded) || pgconn.Timeout(err) || ctx.Err() != nil
}

// unresolvedSQL counts the rows of sync_errors not marked resolved (by
// either of the table's resolved and resolved_at columns).
const unresolvedSQL = `SELECT count(*) FROM sync_errors WHERE NOT resolved AND resolved_at IS NULL`

// recentSQL reads the newest dead letters, without their payload.
const recentSQL = `SELECT id, error_type, COALESCE(user_id, ''), message, COALESCE(lsn::text, ''),
       resolved OR resolved_at IS NOT NULL, created_at
FROM sync_errors ORDER BY id DESC LIMIT $1`

// readDeadLetters counts the unresolved dead letters and reads the newest.
func readDeadLetters(ctx context.Context, pool *pgxpool.Pool) (int64, []DeadLetter, error) {
	var n int64
	if err := pool.QueryRow(ctx, unresolvedSQL).Scan(&n); err != nil {
		return 0, nil, fmt.Errorf("count sync_errors: %w", err)
	}
	rows, err := pool.Query(ctx, recentSQL, recentErrors)
	if err != nil {
		return 0, nil, fmt.Errorf("read sync_errors: %w", err)
	}
	recent, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (DeadLetter, error) {
		var d DeadLetter
		err := r.Scan(&d.ID, &d.ErrorType, &d.UserID, &d.Message, &d.LSN, &d.Resolved, &d.CreatedAt)
		return d, err
	})
	if err != nil {
		return 0, nil, fmt.Errorf("read sync_errors: %w", err)
	}
	return n, recent, nil
}
