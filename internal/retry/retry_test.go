package retry_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/myusta/cdc/internal/retry"
)

// closedErr reports a closed connection the way pgx does.
type closedErr struct{ closed bool }

func (e closedErr) Error() string  { return "conn closed" }
func (e closedErr) IsClosed() bool { return e.closed }

func pgErr(code string) error { return &pgconn.PgError{Severity: "ERROR", Code: code, Message: "m"} }

func TestTransient(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"context canceled", context.Canceled, false},
		{"context deadline", context.DeadlineExceeded, false},
		{"wrapped canceled", fmt.Errorf("query: %w", context.Canceled), false},
		{"canceled wins over eof", fmt.Errorf("%w: %w", context.Canceled, io.EOF), false},
		{"plain error", errors.New("boom"), false},

		{"08006 connection failure", pgErr("08006"), true},
		{"40001 serialization failure", pgErr("40001"), true},
		{"40P01 deadlock", pgErr("40P01"), true},
		{"57P01 admin shutdown", pgErr("57P01"), true},
		{"53300 too many connections", pgErr("53300"), true},
		{"55006 object in use", pgErr("55006"), true},
		{"55P03 lock not available", pgErr("55P03"), true},
		{"wrapped pg error", fmt.Errorf("apply batch: %w", pgErr("40001")), true},

		{"23505 unique violation", pgErr("23505"), false},
		{"22001 string too long", pgErr("22001"), false},
		{"42P01 undefined table", pgErr("42P01"), false},
		{"28P01 bad password", pgErr("28P01"), false},
		{"55000 object not in prerequisite state", pgErr("55000"), false},
		{"wrapped permanent pg error", fmt.Errorf("apply: %w", pgErr("23505")), false},

		{"io.EOF", fmt.Errorf("read: %w", io.EOF), true},
		{"io.ErrUnexpectedEOF", fmt.Errorf("read: %w", io.ErrUnexpectedEOF), true},
		{"ECONNRESET", fmt.Errorf("read: %w", syscall.ECONNRESET), true},
		{"ECONNREFUSED", fmt.Errorf("dial: %w", syscall.ECONNREFUSED), true},
		{"EPIPE", fmt.Errorf("write: %w", syscall.EPIPE), true},
		{"net.ErrClosed", fmt.Errorf("read: %w", net.ErrClosed), true},
		{"net.OpError", &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("no route to host")}, true},
		{"wrapped net.OpError", fmt.Errorf("connect: %w", &net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}), true},
		{"closed conn", fmt.Errorf("exec: %w", closedErr{closed: true}), true},
		{"open conn error", fmt.Errorf("exec: %w", closedErr{closed: false}), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := retry.Transient(tt.err); got != tt.want {
				t.Errorf("Transient(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}

func TestTransientCode(t *testing.T) {
	tests := []struct {
		code string
		want bool
	}{
		{"08000", true}, {"08006", true}, {"08P01", true},
		{"40001", true}, {"40P01", true},
		{"53100", true}, {"53200", true}, {"53300", true},
		{"57014", true}, {"57P01", true}, {"57P03", true},
		{"58030", true},
		{"55006", true}, {"55P03", true},
		{"55000", false}, {"23505", false}, {"22001", false}, {"42P01", false},
		{"28P01", false}, {"42501", false}, {"XX000", false},
		{"", false}, {"08", false}, {"0800", false}, {"080060", false},
	}
	for _, tt := range tests {
		t.Run(tt.code, func(t *testing.T) {
			if got := retry.TransientCode(tt.code); got != tt.want {
				t.Errorf("TransientCode(%q) = %v, want %v", tt.code, got, tt.want)
			}
		})
	}
}

func TestPolicy_BackOff(t *testing.T) {
	tests := []struct {
		name string
		p    retry.Policy
	}{
		{"doubling", retry.Policy{Initial: 100 * time.Millisecond, Max: time.Second, Multiplier: 2}},
		{"one and a half", retry.Policy{Initial: time.Second, Max: 30 * time.Second, Multiplier: 1.5}},
		{"constant", retry.Policy{Initial: 50 * time.Millisecond, Max: 50 * time.Millisecond, Multiplier: 1}},
		{"config defaults", retry.Policy{Initial: time.Second, Max: 30 * time.Second, Multiplier: 2}},
	}
	const samples = 50 // fresh backoffs per policy, to exercise the jitter
	const steps = 40
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for s := 0; s < samples; s++ {
				b := tt.p.BackOff()
				nominal := float64(tt.p.Initial)
				for i := 0; i < steps; i++ {
					got := b.NextBackOff()
					if got == backoff.Stop {
						t.Fatalf("step %d: NextBackOff returned Stop", i)
					}
					lo := time.Duration(math.Floor(nominal*0.8)) - time.Microsecond
					hi := min(time.Duration(math.Ceil(nominal*1.2))+time.Microsecond, tt.p.Max)
					if got < lo || got > hi {
						t.Fatalf("step %d: NextBackOff = %v, want within [%v, %v] (nominal %v ±20%%)",
							i, got, lo, hi, time.Duration(nominal))
					}
					if got > tt.p.Max {
						t.Fatalf("step %d: NextBackOff = %v exceeds Max = %v (RETRY_MAX_DELAY)", i, got, tt.p.Max)
					}
					nominal = math.Min(nominal*tt.p.Multiplier, float64(tt.p.Max))
				}
			}
		})
	}
}

// TestPolicy_BackOffFirstWithinInitial checks the first delay alone, which
// is what a caller sees after the first failure.
func TestPolicy_BackOffFirstWithinInitial(t *testing.T) {
	p := retry.Policy{Initial: time.Second, Max: 30 * time.Second, Multiplier: 2}
	lo, hi := 800*time.Millisecond, 1200*time.Millisecond
	seenBelow, seenAbove := false, false
	for i := 0; i < 200; i++ {
		got := p.BackOff().NextBackOff()
		if got < lo || got > hi {
			t.Fatalf("first NextBackOff = %v, want within [%v, %v]", got, lo, hi)
		}
		seenBelow = seenBelow || got < time.Second
		seenAbove = seenAbove || got > time.Second
	}
	if !seenBelow || !seenAbove {
		t.Errorf("200 first delays never varied on both sides of Initial (below %v, above %v): jitter missing", seenBelow, seenAbove)
	}
}

// logRecord is one decoded JSON log line.
type logRecord struct {
	Level   string `json:"level"`
	Msg     string `json:"msg"`
	Attempt int    `json:"attempt"`
	RetryIn int64  `json:"retry_in"` // nanoseconds, as slog's JSON handler writes a Duration
	Err     string `json:"err"`
}

func decodeLog(t *testing.T, buf *bytes.Buffer) []logRecord {
	t.Helper()
	var out []logRecord
	sc := bufio.NewScanner(bytes.NewReader(buf.Bytes()))
	for sc.Scan() {
		var r logRecord
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("log line is not JSON: %v: %q", err, sc.Text())
		}
		out = append(out, r)
	}
	return out
}

func newLog() (*slog.Logger, *bytes.Buffer) {
	var buf bytes.Buffer
	return slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})), &buf
}

var fast = retry.Policy{Initial: time.Millisecond, Max: time.Millisecond, Multiplier: 1, Loud: 100}

func TestDo_SucceedsAfterTransientFailures(t *testing.T) {
	tests := []struct {
		name     string
		failures int
		err      error
	}{
		{"first try", 0, nil},
		{"after one eof", 1, io.EOF},
		{"after three serialization failures", 3, pgErr("40001")},
		{"after five resets", 5, fmt.Errorf("read: %w", syscall.ECONNRESET)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			log, buf := newLog()
			var calls atomic.Int32
			err := retry.Do(context.Background(), fast, log, "apply", func(ctx context.Context) error {
				if int(calls.Add(1)) <= tt.failures {
					return tt.err
				}
				return nil
			})
			if err != nil {
				t.Fatalf("Do: %v", err)
			}
			if got := int(calls.Load()); got != tt.failures+1 {
				t.Errorf("op called %d times, want %d", got, tt.failures+1)
			}
			if recs := decodeLog(t, buf); len(recs) != tt.failures {
				t.Errorf("logged %d retries, want %d: %s", len(recs), tt.failures, buf)
			}
		})
	}
}

var errSentinel = errors.New("sentinel")

func TestDo_PermanentErrorReturnedImmediately(t *testing.T) {
	unique := pgErr("23505")
	tests := []struct {
		name string
		err  error
		is   error
	}{
		{"plain", errSentinel, errSentinel},
		{"wrapped sentinel", fmt.Errorf("insert: %w", errSentinel), errSentinel},
		{"pg unique violation", unique, unique},
		{"context canceled from op", fmt.Errorf("exec: %w", context.Canceled), context.Canceled},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			log, buf := newLog()
			calls := 0
			// Long delays: a permanent error must not wait for any of them.
			p := retry.Policy{Initial: time.Hour, Max: time.Hour, Multiplier: 2, Loud: 3}
			// Bound the test if the error were (wrongly) retried.
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			start := time.Now()
			err := retry.Do(ctx, p, log, "apply", func(ctx context.Context) error {
				calls++
				return tt.err
			})
			if elapsed := time.Since(start); elapsed > time.Second {
				t.Errorf("Do took %v for a permanent error", elapsed)
			}
			if calls != 1 {
				t.Errorf("op called %d times, want 1", calls)
			}
			if err != tt.err {
				t.Errorf("Do returned %#v, want the op's error %#v unchanged", err, tt.err)
			}
			if !errors.Is(err, tt.is) {
				t.Errorf("errors.Is(%v, %v) = false", err, tt.is)
			}
			var perm *backoff.PermanentError
			if errors.As(err, &perm) {
				t.Errorf("Do leaked a *backoff.PermanentError wrapper: %v", err)
			}
			if buf.Len() != 0 {
				t.Errorf("a permanent error was logged as a retry: %s", buf)
			}
		})
	}
}

func TestDo_ReturnsPromptlyWhenContextCancelled(t *testing.T) {
	tests := []struct {
		name     string
		cancelAt time.Duration
		deadline bool
	}{
		{"cancel during first wait", 5 * time.Millisecond, false},
		{"deadline during first wait", 5 * time.Millisecond, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var ctx context.Context
			var cancel context.CancelFunc
			if tt.deadline {
				ctx, cancel = context.WithTimeout(context.Background(), tt.cancelAt)
			} else {
				ctx, cancel = context.WithCancel(context.Background())
				time.AfterFunc(tt.cancelAt, cancel)
			}
			defer cancel()
			log, _ := newLog()
			p := retry.Policy{Initial: time.Hour, Max: 2 * time.Hour, Multiplier: 2, Loud: 3}
			var calls atomic.Int32
			start := time.Now()
			done := make(chan error, 1)
			go func() {
				done <- retry.Do(ctx, p, log, "connect", func(ctx context.Context) error {
					calls.Add(1)
					return fmt.Errorf("dial: %w", syscall.ECONNREFUSED)
				})
			}()
			select {
			case err := <-done:
				elapsed := time.Since(start)
				want := context.Canceled
				if tt.deadline {
					want = context.DeadlineExceeded
				}
				if !errors.Is(err, want) {
					t.Errorf("Do = %v, want %v", err, want)
				}
				if elapsed > time.Second {
					t.Errorf("Do returned after %v, want < 1s", elapsed)
				}
				if got := calls.Load(); got != 1 {
					t.Errorf("op called %d times, want 1 (the wait is an hour)", got)
				}
			case <-time.After(time.Second):
				t.Fatal("Do did not return within 1s of the context ending")
			}
		})
	}
}

func TestDo_LogsWarnThenErrorFromLoud(t *testing.T) {
	tests := []struct {
		name       string
		loud       int
		failures   int
		wantLevels []string // one per failed attempt
	}{
		{"loud 3", 3, 4, []string{"WARN", "WARN", "ERROR", "ERROR"}},
		{"loud 1", 1, 2, []string{"ERROR", "ERROR"}},
		{"loud 0", 0, 1, []string{"ERROR"}},
		{"loud above failures", 10, 3, []string{"WARN", "WARN", "WARN"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			log, buf := newLog()
			p := fast
			p.Loud = tt.loud
			calls := 0
			err := retry.Do(context.Background(), p, log, "apply batch", func(ctx context.Context) error {
				calls++
				if calls <= tt.failures {
					return pgErr("40P01")
				}
				return nil
			})
			if err != nil {
				t.Fatalf("Do: %v", err)
			}
			for _, lv := range tt.wantLevels {
				if !bytes.Contains(buf.Bytes(), []byte(`"level":"`+lv+`"`)) {
					t.Errorf(`log lacks "level":%q: %s`, lv, buf)
				}
			}
			recs := decodeLog(t, buf)
			if len(recs) != len(tt.wantLevels) {
				t.Fatalf("got %d log lines, want %d: %s", len(recs), len(tt.wantLevels), buf)
			}
			for i, r := range recs {
				if r.Level != tt.wantLevels[i] {
					t.Errorf("attempt %d logged at %s, want %s", i+1, r.Level, tt.wantLevels[i])
				}
				if r.Attempt != i+1 {
					t.Errorf("line %d: attempt = %d, want %d", i, r.Attempt, i+1)
				}
				if r.Msg != "apply batch failed; retrying" {
					t.Errorf("line %d: msg = %q", i, r.Msg)
				}
				if r.Err != "ERROR: m (SQLSTATE 40P01)" {
					t.Errorf("line %d: err = %q, want the op's error", i, r.Err)
				}
				// 1ms ±20% jitter, rounded to the millisecond.
				if time.Duration(r.RetryIn) != time.Millisecond {
					t.Errorf("line %d: retry_in = %v, want 1ms", i, time.Duration(r.RetryIn))
				}
			}
		})
	}
}

// TestDo_GivesUpAfterAttempts: a bounded policy (one-shot commands) stops
// after Attempts tries of a transient failure and returns the last error.
func TestDo_GivesUpAfterAttempts(t *testing.T) {
	log, _ := newLog()
	p := fast
	p.Attempts = 4
	var calls atomic.Int32
	err := retry.Do(context.Background(), p, log, "connect", func(ctx context.Context) error {
		calls.Add(1)
		return io.EOF
	})
	if !errors.Is(err, io.EOF) || calls.Load() != 4 {
		t.Fatalf("Do: err %v after %d calls; want io.EOF after 4", err, calls.Load())
	}
}

// TestKeep: a permanent failure is logged at ERROR and tried again every
// Max until it succeeds; a cancelled context ends it.
func TestKeep(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&buf, nil))
	p := retry.Policy{Initial: time.Millisecond, Max: 10 * time.Millisecond, Multiplier: 2, Loud: 3}
	var calls atomic.Int32
	err := retry.Keep(context.Background(), p, log, "catch up", func(context.Context) error {
		if calls.Add(1) < 3 {
			return &pgconn.PgError{Code: "42501", Message: "permission denied"}
		}
		return nil
	})
	if err != nil || calls.Load() != 3 {
		t.Fatalf("Keep = %v after %d calls, want nil after 3", err, calls.Load())
	}
	if n := bytes.Count(buf.Bytes(), []byte(`"level":"ERROR","msg":"catch up failed on an error no retry fixes`)); n != 2 {
		t.Errorf("%d ERROR lines, want 2:\n%s", n, buf.String())
	}
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(30*time.Millisecond, cancel)
	if err := retry.Keep(ctx, p, log, "never", func(context.Context) error { return errors.New("no") }); !errors.Is(err, context.Canceled) {
		t.Errorf("Keep with a cancelled context = %v, want context.Canceled", err)
	}
}

// A Loop grows its delays and turns loud after Loud failures; Progress
// starts both over.
func TestLoop(t *testing.T) {
	p := retry.Policy{Initial: 100 * time.Millisecond, Max: time.Second, Multiplier: 2, Loud: 2}
	l := p.Loop()
	var waits []time.Duration
	for i := 1; i <= 5; i++ {
		attempt, wait, loud := l.Failed()
		if attempt != i || loud != (i > 2) {
			t.Fatalf("failure %d: attempt %d loud %v", i, attempt, loud)
		}
		if wait > p.Max {
			t.Fatalf("failure %d waits %v, past RETRY_MAX_DELAY %v", i, wait, p.Max)
		}
		waits = append(waits, wait)
	}
	if waits[3] <= waits[0] {
		t.Fatalf("delays do not grow: %v", waits)
	}
	l.Progress()
	attempt, wait, loud := l.Failed()
	if attempt != 1 || loud || wait > 120*time.Millisecond {
		t.Fatalf("after progress: attempt %d wait %v loud %v, want 1, ≤ Initial+20%%, quiet", attempt, wait, loud)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if retry.Sleep(ctx, time.Hour) {
		t.Fatal("Sleep on an ended context reported a full wait")
	}
	if !retry.Sleep(context.Background(), time.Millisecond) {
		t.Fatal("Sleep of 1ms did not report a full wait")
	}
}
