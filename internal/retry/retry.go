// Package retry classifies database errors as transient or permanent and
// retries transient ones with exponential backoff (cenkalti/backoff/v4).
package retry

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net"
	"syscall"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/jackc/pgx/v5/pgconn"
)

// Policy is the RETRY_* configuration.
type Policy struct {
	Initial    time.Duration // RETRY_INITIAL_DELAY
	Max        time.Duration // RETRY_MAX_DELAY
	Multiplier float64       // RETRY_BACKOFF_MULTIPLIER
	Loud       int           // attempts after which failures are logged at ERROR (MAX_RETRIES / MAX_RECONNECT_ATTEMPTS)
	// Attempts, when positive, bounds the attempts (one-shot commands give
	// up); 0 retries for as long as the context lives (the daemon).
	Attempts int
}

// BackOff returns a fresh exponential backoff that never stops by itself:
// after the delay reaches Max it keeps probing every Max. Delays carry
// ±20 % jitter, but never exceed Max (RETRY_MAX_DELAY means what it says).
func (p Policy) BackOff() backoff.BackOff {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = p.Initial
	b.MaxInterval = p.Max
	b.Multiplier = p.Multiplier
	b.RandomizationFactor = 0.2
	b.MaxElapsedTime = 0
	b.Reset()
	return capped{b, p.Max}
}

// Loop paces a loop that retries for as long as its context lives and
// whose attempts can make progress before they fail (a replication session
// that streamed for an hour and then lost its connection): Failed counts a
// failure and returns the delay before the next attempt; Progress starts
// the delays and the count over.
type Loop struct {
	p        Policy
	b        backoff.BackOff
	failures int
}

// Loop returns a fresh Loop over p.
func (p Policy) Loop() *Loop { return &Loop{p: p, b: p.BackOff()} }

// Progress records that an attempt got somewhere: the next failure waits
// Initial again and counts as the first.
func (l *Loop) Progress() { l.b.Reset(); l.failures = 0 }

// Failed records a failure and returns its number since the last progress,
// the delay before the next attempt, and whether the failure is past Loud
// (to be logged at ERROR).
func (l *Loop) Failed() (attempt int, wait time.Duration, loud bool) {
	l.failures++
	return l.failures, l.b.NextBackOff(), l.failures > l.p.Loud
}

// Sleep waits d or until ctx ends, and reports whether the full d passed.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// capped is a backoff whose delays never exceed max.
type capped struct {
	*backoff.ExponentialBackOff
	max time.Duration
}

func (c capped) NextBackOff() time.Duration {
	d := c.ExponentialBackOff.NextBackOff()
	if d == backoff.Stop || c.max <= 0 {
		return d
	}
	return min(d, c.max)
}

// Transient reports whether err is worth retrying: a lost or refused
// connection, a timeout, or a server error whose SQLSTATE class says the
// same statement can succeed later (serialization failure, deadlock,
// shutdown, too many connections, out of resources).
func Transient(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return TransientCode(pgErr.Code)
	}
	if CertificateProblem(err) {
		return false // the same certificate fails the same way next time
	}
	if pgconn.SafeToRetry(err) || pgconn.Timeout(err) {
		return true
	}
	var netErr net.Error
	if errors.As(err, &netErr) {
		return true
	}
	var connectErr *pgconn.ConnectError
	if errors.As(err, &connectErr) {
		return true
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EPIPE) || errors.Is(err, net.ErrClosed) {
		return true
	}
	// pgx reports a connection that died mid-statement as a plain error whose
	// cause is the closed conn; treat any error on a closed conn as transient.
	var closed interface{ IsClosed() bool }
	if errors.As(err, &closed) && closed.IsClosed() {
		return true
	}
	return false
}

// CertificateProblem reports whether err is a failed verification of the
// server's TLS certificate (unknown authority, wrong host name, expired).
func CertificateProblem(err error) bool {
	var verify *tls.CertificateVerificationError
	var unknown x509.UnknownAuthorityError
	var host x509.HostnameError
	var invalid x509.CertificateInvalidError
	return errors.As(err, &verify) || errors.As(err, &unknown) || errors.As(err, &host) || errors.As(err, &invalid)
}

// TransientCode classifies a SQLSTATE.
func TransientCode(code string) bool {
	if len(code) != 5 {
		return false
	}
	switch code[:2] {
	case "08", // connection exception
		"40", // transaction rollback: serialization failure, deadlock
		"53", // insufficient resources: too many connections, out of memory, disk full
		"57", // operator intervention: admin/crash shutdown, cannot connect now, query canceled
		"58": // system error
		return true
	}
	return code == "55P03" || code == "55006" // lock not available; object in use (e.g. slot active)
}

// Do runs op until it succeeds, fails permanently (a non-transient error,
// returned as is), or ctx ends. Failures are logged at WARN and, from the
// p.Loud-th attempt on, at ERROR.
func Do(ctx context.Context, p Policy, log *slog.Logger, what string, op func(ctx context.Context) error) error {
	var b backoff.BackOff = backoff.WithContext(p.BackOff(), ctx)
	if p.Attempts > 0 {
		b = backoff.WithMaxRetries(b, uint64(p.Attempts-1))
	}
	attempt := 0
	return backoff.RetryNotify(func() error {
		attempt++
		err := op(ctx)
		if err == nil || Transient(err) {
			return err
		}
		return backoff.Permanent(err)
	}, b, func(err error, wait time.Duration) {
		level := slog.LevelWarn
		if attempt >= p.Loud {
			level = slog.LevelError
		}
		log.Log(ctx, level, what+" failed; retrying", "attempt", attempt, "retry_in", wait.Round(time.Millisecond), "err", err)
	})
}

// Keep runs op until it succeeds or ctx ends: transient failures are
// retried as Do retries them; a permanent one is logged at ERROR and tried
// again every p.Max, since its cause (a privilege, a dropped object) may
// be put right meanwhile. It returns nil once op succeeded, else ctx's
// error.
func Keep(ctx context.Context, p Policy, log *slog.Logger, what string, op func(ctx context.Context) error) error {
	for {
		err := Do(ctx, p, log, what, op)
		if err == nil || ctx.Err() != nil {
			return ctx.Err()
		}
		log.Error(what+" failed on an error no retry fixes; trying again every RETRY_MAX_DELAY until its cause is fixed", "retry_in", p.Max.String(), "err", err)
		if !Sleep(ctx, p.Max) {
			return ctx.Err()
		}
	}
}
