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
	Rows            int           // users rows (default 1,000,000)
	Reps            int           // repetitions of the copy, backlog and steady phases (median reported)
	SteadyTPS       int           // single-row transactions per second in the steady phase
	SteadyFor       time.Duration // length of the steady phase
	BacklogClients  int           // concurrent clients writing the backlog's single-row updates
	RampRates       []int         // rates (single-row transactions/s) of the keep-up ramp, in order
	RampStep        time.Duration // length of each ramp step
	CDC             string        // path of the cdc binary
	Fast            bool          // fsync off on both servers (default: durable)
	Shape           string        // the users table: "reference" (11 columns) or "wide" (20, see wideColumns)
	Wire            string        // cdc's WIRE_FORMAT (auto, binary or text)
	Core            bool          // only the copy, backlog and steady phases (no ramp, reconcile or notify mode)
	SweepRates      []int         // rates (single-row transactions/s) of the latency sweep; none: no sweep
	SweepFor        time.Duration // length of each sweep window
	SweepRounds     int           // rounds through the sweep's rates
	BigTxRows       int           // rows of the one-transaction catch-up (bigTxPhase); 0: none
	DecodingWorkMem string        // the source's logical_decoding_work_mem; "": its default, 64MB
	Regions         bool          // the cross-region phase (regionsPhase) after the others
	RegionRTT       time.Duration // its round trip between the regions (default 40 ms)
	RegionRows      int           // its users rows, on servers of its own (default 100,000)
	RegionTPS       int           // its steady windows' rate (default 200 transactions/s)
	RegionFor       time.Duration // its steady windows' length (default 15 s)
	Only            string        // only this phase: OnlyRegions; "": every phase asked for
	Log             io.Writer     // progress
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

	SteadyNotify        Steady       // the steady phase with cdc in notify mode
	NotifySourceTPS     float64      // the steady load with the notify trigger and no listener: transactions/s made
	NotifySourceCommit  [3]float64   // … and its statement + commit time, p50/p95/p99 ms
	RampCDC, RampNotify []RampStep   // the keep-up ramp, replication and notify mode
	Sweep               []SweepPoint // the rate sweep

	// One large transaction caught up on (bigTxPhase): how long it took
	// to write, and each consumer's runs.
	BigTxWrite                         []time.Duration
	BigTxCDC, BigTxNat, BigTxNatStream []CatchUp
	RSSBigTx                           int64

	VerifyFull    []time.Duration // cdc verify --full on equal tables
	VerifyHeap    [2]int64        // heap bytes of users (source, chat) when verify ran
	Window        []time.Duration // one windowed reconcile run
	WindowChanged int64           // rows changed in the window
	WindowChecked int64           // rows the windowed run compared, both sides

	// A conflictRows-row transaction, plain and with a swap that chat's
	// unique index refuses set-based (see conflictPhase).
	ConflictFree, ConflictSwap []time.Duration

	Cross *CrossRegion // the cross-region phase, if it ran
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
	if o.Only == OnlyRegions {
		if err := regionsPhase(ctx, o, r); err != nil {
			return nil, fmt.Errorf("regions phase: %w", err)
		}
		return r, nil
	}
	s, err := setup(ctx, o, r)
	if s != nil {
		defer s.close()
	}
	if err != nil {
		return nil, err
	}
	b := &run{s: s, o: o, r: r, nat: &native{chat: s.native, sourceDSN: s.sourceDSN, name: subName}, env: cdcEnv(s, o)}
	defer func() { _ = b.stopCDC() }()
	if err := b.copyPhase(ctx); err != nil {
		return nil, err
	}
	ids, err := loadIDs(ctx, s.source)
	if err != nil {
		return nil, err
	}
	floor := &ceiling{dsn: s.sourceDSN, slot: "bench_ceiling"}
	if err := b.backlogPhase(ctx, floor, ids); err != nil {
		return nil, err
	}
	// Steady latency, each consumer measured alone, in rounds.
	if err := steadyRounds(ctx, s, o, r, b.env, b.nat, floor, ids); err != nil {
		return nil, err
	}
	if len(o.SweepRates) > 0 {
		if err := sweepPhase(ctx, s, o, r, b.env, b.nat, ids); err != nil {
			return nil, err
		}
	}
	if err := autovacuum(ctx, s, true); err != nil {
		return nil, err
	}
	if o.BigTxRows > 0 {
		if err := b.bigTxPhase(ctx); err != nil {
			return nil, fmt.Errorf("big transaction phase: %w", err)
		}
	}
	if err := b.converge(ctx); err != nil {
		return nil, err
	}
	if o.Core {
		return regionsAfter(ctx, s, o, r)
	}
	if err := conflictPhase(ctx, s, o, r, b.env, ids); err != nil {
		return nil, fmt.Errorf("conflict phase: %w", err)
	}
	if err := reconcilePhase(ctx, s, o, r, b.env); err != nil {
		return nil, fmt.Errorf("reconcile phase: %w", err)
	}
	if err := notifyPhase(ctx, s, ids, o, r, b.env); err != nil {
		return nil, fmt.Errorf("notify phase: %w", err)
	}
	return regionsAfter(ctx, s, o, r)
}

// regionsAfter runs the cross-region phase, if asked for, after the other
// phases, whose servers it stops first: it starts servers of its own.
func regionsAfter(ctx context.Context, s *servers, o Options, r *Result) (*Result, error) {
	if !o.Regions {
		return r, nil
	}
	s.close()
	if err := regionsPhase(ctx, o, r); err != nil {
		return nil, fmt.Errorf("regions phase: %w", err)
	}
	return r, nil
}

// cdcEnv is cdc's configuration for s's servers, connected directly.
func cdcEnv(s *servers, o Options) map[string]string {
	return map[string]string{
		"SOURCE_DATABASE_URL": s.sourceDSN, "CHAT_DATABASE_URL": s.cdcDSN, "SLOT_NAME": slot,
		"LOG_LEVEL": "debug", "HTTP_ADDR": "127.0.0.1:0", // debug: per-batch timings
		"SYNC_COLUMNS": strings.Join(s.cfg.Columns, ","), "WIRE_FORMAT": o.Wire,
	}
}

// run is one benchmark run's state across its phases.
type run struct {
	s    *servers
	o    Options
	r    *Result
	env  map[string]string // cdc's configuration
	nat  *native
	proc *cdcProc // the cdc process running, if any
}

func (b *run) step(format string, a ...any) { fmt.Fprintf(b.o.Log, "bench: "+format+"\n", a...) }

// stopCDC stops the cdc process, if one runs.
func (b *run) stopCDC() error {
	if b.proc == nil {
		return nil
	}
	err := b.proc.stop()
	b.proc = nil
	return err
}

// copyPhase times the initial copy: the COPY pipe, cdc and native, each
// from an empty chat table, Reps times. cdc is left running. Autovacuum
// of one copy's fresh table would run during the next measurement, so it
// is off on the chat tables meanwhile.
func (b *run) copyPhase(ctx context.Context) error {
	s, r := b.s, b.r
	if err := autovacuum(ctx, s, false); err != nil {
		return err
	}
	for rep := 0; rep < b.o.Reps; rep++ {
		if err := checkpoint(ctx, s); err != nil {
			return err
		}
		d, err := pipeCopy(ctx, s)
		if err != nil {
			return err
		}
		r.CopyPipe = append(r.CopyPipe, d)
		if err := b.copyCDC(ctx); err != nil {
			return err
		}
		if err := b.nat.drop(ctx); err != nil {
			return err
		}
		if _, err := s.native.Exec(ctx, "TRUNCATE users"); err != nil {
			return err
		}
		if err := checkpoint(ctx, s); err != nil {
			return err
		}
		start := time.Now()
		if err := b.nat.create(ctx); err != nil {
			return err
		}
		if err := b.nat.waitReady(ctx); err != nil {
			return err
		}
		r.CopyNative = append(r.CopyNative, time.Since(start))
		b.step("copy %d/%d: pipe %s, cdc %s, native %s", rep+1, b.o.Reps, r.CopyPipe[rep], r.CopyCDC[rep], r.CopyNative[rep])
	}
	return autovacuum(ctx, s, true)
}

// copyCDC times one first copy by a fresh cdc, which it leaves running.
func (b *run) copyCDC(ctx context.Context) error {
	if err := b.stopCDC(); err != nil {
		return err
	}
	if err := resetCDC(ctx, b.s); err != nil {
		return err
	}
	if err := checkpoint(ctx, b.s); err != nil {
		return err
	}
	var err error
	if b.proc, err = startCDC(b.o.CDC, b.env, b.o.Log); err != nil {
		return err
	}
	done, err := b.proc.waitLog(ctx, "first copy done")
	if err != nil {
		return err
	}
	r := b.r
	r.CopyCDC = append(r.CopyCDC, time.Since(b.proc.started))
	if m, err := b.proc.waitLog(ctx, "streaming changes"); err == nil {
		r.Format, _ = m["format"].(string)
	}
	if secs, ok := done["seconds"].(float64); ok {
		r.CopyCDCStartup = append(r.CopyCDCStartup, time.Since(b.proc.started)-time.Duration(secs*float64(time.Second)))
	}
	r.RSSCopy = max(r.RSSCopy, b.proc.peak())
	return nil
}

// backlogPhase times catching up on a backlog written while every
// consumer is stopped: the bare walsender (the floor), cdc, native, each
// alone, Reps times.
func (b *run) backlogPhase(ctx context.Context, floor *ceiling, ids []string) error {
	s, r := b.s, b.r
	for rep := 0; rep < b.o.Reps; rep++ {
		if err := b.stopCDC(); err != nil {
			return err
		}
		if err := b.nat.enable(ctx, false); err != nil {
			return err
		}
		if err := floor.create(ctx); err != nil {
			return err
		}
		marker := fmt.Sprintf("00000000-0000-0000-0000-%012d", rep+1)
		n, err := makeBacklog(ctx, s.source, ids, b.o.BacklogClients, marker, uint64(rep))
		if err != nil {
			return err
		}
		r.BacklogChanges = n
		if err := checkpoint(ctx, s); err != nil {
			return err
		}
		d, err := floor.drain(ctx, marker)
		if err != nil {
			return err
		}
		r.BacklogCeiling = append(r.BacklogCeiling, d)

		if b.proc, err = startCDC(b.o.CDC, b.env, b.o.Log); err != nil {
			return err
		}
		if err := waitMarker(ctx, s.cdc, marker); err != nil {
			return err
		}
		r.BacklogCDC = append(r.BacklogCDC, time.Since(b.proc.started))
		r.RSSBacklog = max(r.RSSBacklog, b.proc.peak())
		if err := b.stopCDC(); err != nil {
			return err
		}

		start := time.Now()
		if err := b.nat.enable(ctx, true); err != nil {
			return err
		}
		if err := waitMarker(ctx, s.native, marker); err != nil {
			return err
		}
		r.BacklogNat = append(r.BacklogNat, time.Since(start))
		b.step("backlog %d/%d (%d changes): walsender alone %s, cdc %s, native %s", rep+1, b.o.Reps, n,
			r.BacklogCeiling[rep], r.BacklogCDC[rep], r.BacklogNat[rep])
	}
	return nil
}

// converge lets cdc catch up on what native's steady phase wrote, then
// checks both sides equal the source row by row, and drops native's
// subscription.
func (b *run) converge(ctx context.Context) error {
	s := b.s
	var err error
	if b.proc, err = startCDC(b.o.CDC, b.env, b.o.Log); err != nil {
		return err
	}
	marker := "00000000-0000-0000-0000-0000000fffff"
	if err := insertMarker(ctx, s.source, marker); err != nil {
		return err
	}
	for _, p := range []*pgxpool.Pool{s.cdc, s.native} {
		if err := waitMarker(ctx, p, marker); err != nil {
			return err
		}
	}
	if err := b.stopCDC(); err != nil {
		return err
	}
	if err := equal(ctx, s, map[string]*pgxpool.Pool{"cdc": s.cdc, "native": s.native}); err != nil {
		return err
	}
	return b.nat.drop(ctx)
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
