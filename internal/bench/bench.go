// Package bench measures cdc against PostgreSQL's native logical
// replication on the same machine, doing the same work, in one run: the
// initial copy (with a binary COPY pipe as the practical limit), catching up
// on a backlog, steady-state latency, and cdc's peak memory.
package bench

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/myusta/cdc/internal/config"
	"github.com/myusta/cdc/internal/pglocal"
	"github.com/myusta/cdc/internal/tablediff"
)

// Options configure a run.
type Options struct {
	Rows           int           // users rows (default 1,000,000)
	Reps           int           // repetitions of the copy, backlog and steady phases (median reported)
	SteadyTPS      int           // single-row transactions per second in the steady phase
	SteadyFor      time.Duration // length of the steady phase
	BacklogClients int           // concurrent clients writing the backlog's single-row updates
	RampRates      []int         // rates (single-row transactions/s) of the keep-up ramp, in order
	RampStep       time.Duration // length of each ramp step
	CDC            string        // path of the cdc binary
	Fast           bool          // fsync off on both servers (default: durable)
	Shape          string        // the users table: "reference" (11 columns) or "wide" (20, see wideColumns)
	Wire           string        // cdc's WIRE_FORMAT (auto, binary or text)
	Core           bool          // only the copy, backlog and steady phases (no ramp, reconcile or notify mode)
	Log            io.Writer     // progress
}

// Result is everything one run measured.
type Result struct {
	Options
	PGVersion string
	Format    string // the wire format cdc chose (its "streaming changes" line)

	CopyPipe, CopyCDC, CopyNative []time.Duration
	CopyCDCStartup                []time.Duration // process start to the copy's start: preflight, slot creation

	BacklogChanges                         int
	BacklogCeiling, BacklogCDC, BacklogNat []time.Duration
	// Steady windows, Reps rounds of each consumer alone: source
	// updated_at -> arrival at a discarding consumer (the floor) or the
	// chat write, and the window with the median p99 of each.
	SteadyFloorRuns              [][3]float64
	SteadyCDCRuns, SteadyNatRuns []Steady
	SteadyFloor                  [3]float64 // p50/p95/p99 ms
	SteadyCDC, SteadyNat         Steady

	RSSCopy, RSSBacklog, RSSSteady, RSSNotify int64

	SteadyNotify        Steady     // the steady phase with cdc in notify mode
	NotifySourceTPS     float64    // the steady load with the notify trigger and no listener: transactions/s made
	NotifySourceCommit  [3]float64 // … and its statement + commit time, p50/p95/p99 ms
	RampCDC, RampNotify []RampStep // the keep-up ramp, replication and notify mode

	VerifyFull    []time.Duration // cdc verify --full on equal tables
	VerifyHeap    [2]int64        // heap bytes of users (source, chat) when verify ran
	Window        []time.Duration // one windowed reconcile run
	WindowChanged int64           // rows changed in the window
	WindowChecked int64           // rows the windowed run compared, both sides

	// A conflictRows-row transaction, plain and with a swap that chat's
	// unique index refuses set-based (see conflictPhase).
	ConflictFree, ConflictSwap []time.Duration
}

const (
	slot       = "bench_cdc"
	subName    = "bench_native"
	sourceDB   = "bench_source"
	chatCDC    = "bench_chat_cdc"
	chatNative = "bench_chat_native"
	chatPipe   = "bench_chat_pipe"
)

// servers are the two throw-away PostgreSQL servers and the pools the
// benchmark uses.
type servers struct {
	src, chat                 *pglocal.Server
	source, cdc, native, pipe *pgxpool.Pool
	sourceDSN, cdcDSN, natDSN string
	cfg                       *config.Config
}

func (s *servers) close() {
	for _, p := range []*pgxpool.Pool{s.source, s.cdc, s.native, s.pipe} {
		if p != nil {
			p.Close()
		}
	}
	for _, srv := range []*pglocal.Server{s.src, s.chat} {
		if srv != nil {
			_ = srv.Stop()
		}
	}
}

// Run performs the whole benchmark.
func Run(ctx context.Context, o Options) (*Result, error) {
	if o.Log == nil {
		o.Log = io.Discard
	}
	// The log is written by cdc processes' output and several goroutines.
	o.Log = &lockedWriter{w: o.Log}
	if o.Shape == "" {
		o.Shape = ShapeReference
	}
	if o.Wire == "" {
		o.Wire = "auto"
	}
	r := &Result{Options: o}
	s, err := setup(ctx, o, r)
	if s != nil {
		defer s.close()
	}
	if err != nil {
		return nil, err
	}
	nat := &native{chat: s.native, sourceDSN: s.sourceDSN, name: subName}
	env := map[string]string{
		"SOURCE_DATABASE_URL": s.sourceDSN, "CHAT_DATABASE_URL": s.cdcDSN, "SLOT_NAME": slot,
		"LOG_LEVEL": "debug", "HTTP_ADDR": "127.0.0.1:0", // debug: per-batch timings
		"SYNC_COLUMNS": strings.Join(s.cfg.Columns, ","), "WIRE_FORMAT": o.Wire,
	}
	step := func(format string, a ...any) { fmt.Fprintf(o.Log, "bench: "+format+"\n", a...) }

	// 1. Initial copy. Autovacuum of one copy's fresh table would run
	// during the next measurement, so it is off on the chat tables here.
	if err := autovacuum(ctx, s, false); err != nil {
		return nil, err
	}
	var proc *cdcProc
	for rep := 0; rep < o.Reps; rep++ {
		if err := checkpoint(ctx, s); err != nil {
			return nil, err
		}
		d, err := pipeCopy(ctx, s)
		if err != nil {
			return nil, err
		}
		r.CopyPipe = append(r.CopyPipe, d)

		if proc != nil {
			if err := proc.stop(); err != nil {
				return nil, err
			}
		}
		if err := resetCDC(ctx, s); err != nil {
			return nil, err
		}
		if err := checkpoint(ctx, s); err != nil {
			return nil, err
		}
		if proc, err = startCDC(o.CDC, env, o.Log); err != nil {
			return nil, err
		}
		done, err := proc.waitLog(ctx, "first copy done")
		if err != nil {
			return nil, err
		}
		r.CopyCDC = append(r.CopyCDC, time.Since(proc.started))
		if m, err := proc.waitLog(ctx, "streaming changes"); err == nil {
			r.Format, _ = m["format"].(string)
		}
		if secs, ok := done["seconds"].(float64); ok {
			r.CopyCDCStartup = append(r.CopyCDCStartup, time.Since(proc.started)-time.Duration(secs*float64(time.Second)))
		}
		r.RSSCopy = max(r.RSSCopy, proc.peak())

		if err := nat.drop(ctx); err != nil {
			return nil, err
		}
		if _, err := s.native.Exec(ctx, "TRUNCATE users"); err != nil {
			return nil, err
		}
		if err := checkpoint(ctx, s); err != nil {
			return nil, err
		}
		start := time.Now()
		if err := nat.create(ctx); err != nil {
			return nil, err
		}
		if err := nat.waitReady(ctx); err != nil {
			return nil, err
		}
		r.CopyNative = append(r.CopyNative, time.Since(start))
		step("copy %d/%d: pipe %s, cdc %s, native %s", rep+1, o.Reps, r.CopyPipe[rep], r.CopyCDC[rep], r.CopyNative[rep])
	}

	if err := autovacuum(ctx, s, true); err != nil {
		return nil, err
	}

	// 2. Backlog: every consumer stopped while it is written, then each
	// catches up alone: the bare walsender (the floor), cdc, native.
	ids, err := loadIDs(ctx, s.source)
	if err != nil {
		return nil, err
	}
	floor := &ceiling{dsn: s.sourceDSN, slot: "bench_ceiling"}
	for rep := 0; rep < o.Reps; rep++ {
		if proc != nil {
			if err := proc.stop(); err != nil {
				return nil, err
			}
			proc = nil
		}
		if err := nat.enable(ctx, false); err != nil {
			return nil, err
		}
		if err := floor.create(ctx); err != nil {
			return nil, err
		}
		marker := fmt.Sprintf("00000000-0000-0000-0000-%012d", rep+1)
		n, err := makeBacklog(ctx, s.source, ids, o.BacklogClients, marker, uint64(rep))
		if err != nil {
			return nil, err
		}
		r.BacklogChanges = n
		if err := checkpoint(ctx, s); err != nil {
			return nil, err
		}
		d, err := floor.drain(ctx, marker)
		if err != nil {
			return nil, err
		}
		r.BacklogCeiling = append(r.BacklogCeiling, d)

		if proc, err = startCDC(o.CDC, env, o.Log); err != nil {
			return nil, err
		}
		if err := waitMarker(ctx, s.cdc, marker); err != nil {
			return nil, err
		}
		r.BacklogCDC = append(r.BacklogCDC, time.Since(proc.started))
		r.RSSBacklog = max(r.RSSBacklog, proc.peak())
		if err := proc.stop(); err != nil {
			return nil, err
		}
		proc = nil

		start := time.Now()
		if err := nat.enable(ctx, true); err != nil {
			return nil, err
		}
		if err := waitMarker(ctx, s.native, marker); err != nil {
			return nil, err
		}
		r.BacklogNat = append(r.BacklogNat, time.Since(start))
		step("backlog %d/%d (%d changes): walsender alone %s, cdc %s, native %s", rep+1, o.Reps, n,
			r.BacklogCeiling[rep], r.BacklogCDC[rep], r.BacklogNat[rep])
	}

	// 3. Steady latency, each consumer measured alone, in rounds.
	if err := steadyRounds(ctx, s, o, r, env, nat, floor, ids); err != nil {
		return nil, err
	}

	// cdc catches up on what native's steady phase wrote, then stops.
	if proc, err = startCDC(o.CDC, env, o.Log); err != nil {
		return nil, err
	}
	marker := "00000000-0000-0000-0000-0000000fffff"
	if err := insertMarker(ctx, s.source, marker); err != nil {
		return nil, err
	}
	for _, p := range []*pgxpool.Pool{s.cdc, s.native} {
		if err := waitMarker(ctx, p, marker); err != nil {
			return nil, err
		}
	}

	// Both sides must end equal to the source, row by row.
	if err := proc.stop(); err != nil {
		return nil, err
	}
	if err := equal(ctx, s, map[string]*pgxpool.Pool{"cdc": s.cdc, "native": s.native}); err != nil {
		return nil, err
	}
	if err := nat.drop(ctx); err != nil {
		return nil, err
	}
	if o.Core {
		return r, nil
	}
	if err := conflictPhase(ctx, s, o, r, env, ids); err != nil {
		return nil, fmt.Errorf("conflict phase: %w", err)
	}
	if err := reconcilePhase(ctx, s, o, r, env); err != nil {
		return nil, fmt.Errorf("reconcile phase: %w", err)
	}
	if err := notifyPhase(ctx, s, ids, o, r, env); err != nil {
		return nil, fmt.Errorf("notify phase: %w", err)
	}
	return r, nil
}

// equal checks that each chat table equals the source, row by row.
func equal(ctx context.Context, s *servers, chats map[string]*pgxpool.Pool) error {
	for name, p := range chats {
		diff, err := tablediff.Diff(ctx, s.source, p, "users", "id", s.cfg.Columns, 5)
		if err != nil {
			return err
		}
		if len(diff) > 0 {
			return fmt.Errorf("%s's chat table differs from the source: %v", name, diff)
		}
	}
	return nil
}

// catchUpWithin bounds how long a consumer may take to apply what a
// steady phase or ramp step wrote.
const catchUpWithin = 3 * time.Minute

// quantiles returns p50, p95, p99 of xs.
func quantiles(xs []float64) [3]float64 {
	if len(xs) == 0 {
		return [3]float64{}
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	at := func(q float64) float64 { return s[min(len(s)-1, int(q*float64(len(s))))] }
	return [3]float64{at(0.5), at(0.95), at(0.99)}
}
