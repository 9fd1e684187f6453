// Package leader lets several cdc processes run against the same databases
// with exactly one active: the one holding a session-level advisory lock on
// the chat database. The others stand by and take over when the lock is
// released — at once when the active process exits or is killed, since the
// server drops a dead session's locks.
package leader

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/myusta/cdc/internal/db"
	"github.com/myusta/cdc/internal/retry"
)

// Lock is the held leadership.
type Lock struct {
	conn *pgx.Conn
	lost chan struct{}
	stop context.CancelFunc
	done chan struct{}
}

// key is the advisory lock's key for slot.
func key(slot string) int64 {
	h := fnv.New64a()
	h.Write([]byte("cdc leader " + slot))
	return int64(h.Sum64())
}

// Options configure Acquire.
type Options struct {
	DSN     string        // chat database
	Slot    string        // names the lock: one active cdc per slot
	Every   time.Duration // how often a standby tries again, and the active one checks its lock
	Retry   retry.Policy
	Logger  *slog.Logger
	Standby func(holder string) // called once when this process starts standing by
}

// Acquire returns once this process holds the lock, trying every
// opts.Every while another process holds it.
func Acquire(ctx context.Context, opts Options) (*Lock, error) {
	log := opts.Logger.With("component", "leader")
	standing := false
	for {
		conn, err := connect(ctx, opts, log)
		if err != nil {
			return nil, err
		}
		for {
			var got bool
			if got, err = tryLock(ctx, conn, opts.Slot); err != nil {
				break
			}
			if got {
				if standing {
					log.Info("the active cdc is gone: taking over")
				}
				return watch(conn, opts, log), nil
			}
			if !standing {
				standing = true
				holder := holderOf(ctx, conn, opts.Slot)
				log.Info("standing by: another cdc is active on this slot; taking over when it stops", "slot", opts.Slot, "active", holder)
				if opts.Standby != nil {
					opts.Standby(holder)
				}
			}
			select {
			case <-ctx.Done():
				conn.Close(context.Background())
				return nil, ctx.Err()
			case <-time.After(opts.Every):
			}
		}
		conn.Close(context.Background())
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		log.Warn("leader lock connection failed; reconnecting", "err", err)
	}
}

// Holder describes the active cdc on slot (the session holding its lock
// on the chat database at dsn), or "" when none is active.
func Holder(ctx context.Context, dsn, slot string) (string, error) {
	conn, err := db.Connect(ctx, dsn)
	if err != nil {
		return "", err
	}
	defer conn.Close(context.Background())
	var held bool
	k := key(slot)
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted
  AND classid = (($1::bigint >> 32) & 4294967295)::oid AND objid = ($1::bigint & 4294967295)::oid AND objsubid = 1)`, k).Scan(&held); err != nil {
		return "", fmt.Errorf("look up the leader lock: %w", err)
	}
	if !held {
		return "", nil
	}
	return holderOf(ctx, conn, slot), nil
}

// holderOf describes the session holding the lock, for people.
func holderOf(ctx context.Context, conn *pgx.Conn, slot string) string {
	k := key(slot)
	var pid int32
	var app, addr string
	err := conn.QueryRow(ctx, `SELECT a.pid, a.application_name, COALESCE(host(a.client_addr), 'local')
FROM pg_locks l JOIN pg_stat_activity a USING (pid)
WHERE l.locktype = 'advisory' AND l.granted AND l.classid = (($1::bigint >> 32) & 4294967295)::oid AND l.objid = ($1::bigint & 4294967295)::oid AND l.objsubid = 1`, k).Scan(&pid, &app, &addr)
	if err != nil {
		return "unknown"
	}
	return fmt.Sprintf("%s from %s (chat backend pid %d)", app, addr, pid)
}

// watch checks the lock's session every interval. When the session fails
// (the chat database restarted, the network cut), the server has dropped
// the lock: watch reconnects, with backoff and for as long as it takes, and
// takes the lock again — unless another instance took it meanwhile, in
// which case Lost closes.
func watch(conn *pgx.Conn, opts Options, log *slog.Logger) *Lock {
	ctx, cancel := context.WithCancel(context.Background())
	l := &Lock{conn: conn, lost: make(chan struct{}), stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(l.done)
		t := time.NewTicker(opts.Every)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			pctx, pcancel := context.WithTimeout(ctx, max(opts.Every, 5*time.Second))
			err := l.conn.Ping(pctx)
			pcancel()
			if err == nil || ctx.Err() != nil {
				continue
			}
			log.Warn("the leader lock's connection failed; taking the lock again once the chat database answers", "err", err)
			_ = l.conn.Close(context.Background())
			got, err := l.retake(ctx, opts, log)
			if ctx.Err() != nil {
				return
			}
			if err != nil || !got {
				log.Error("another cdc took the leader lock while this one's connection was down: stopping here", "err", err)
				close(l.lost)
				return
			}
			log.Info("took the leader lock again")
		}
	}()
	return l
}

// retake reconnects and tries the lock once.
func (l *Lock) retake(ctx context.Context, opts Options, log *slog.Logger) (bool, error) {
	conn, err := connect(ctx, opts, log)
	if err != nil {
		return false, err
	}
	l.conn = conn
	return tryLock(ctx, conn, opts.Slot)
}

// connect opens the lock's own session, retrying with backoff.
func connect(ctx context.Context, opts Options, log *slog.Logger) (conn *pgx.Conn, err error) {
	err = retry.Do(ctx, opts.Retry, log, "connect for the leader lock", func(ctx context.Context) (err error) {
		conn, err = db.Connect(ctx, opts.DSN)
		return err
	})
	return conn, err
}

// tryLock takes the lock on conn's session if it is free.
func tryLock(ctx context.Context, conn *pgx.Conn, slot string) (got bool, err error) {
	err = conn.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", key(slot)).Scan(&got)
	return got, err
}

// Lost is closed when the lock can no longer be trusted.
func (l *Lock) Lost() <-chan struct{} { return l.lost }

// Release gives the lock up.
func (l *Lock) Release() {
	l.stop()
	<-l.done
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = l.conn.Close(ctx) // closing the session releases the lock
}

// ErrLost is returned by a daemon that stopped because its lock was lost.
var ErrLost = errors.New("lost the leader lock")
