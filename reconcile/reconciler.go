package reconcile

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/myusta/cdc/change"
	"github.com/myusta/cdc/internal/keyed"
)

// Options configure a Reconciler.
type Options struct {
	Interval     time.Duration // SYNC_INTERVAL_MINUTES: pause between the end of a run and the next
	Multiplier   float64       // SYNC_WINDOW_MULTIPLIER: window = Interval × Multiplier
	FullInterval time.Duration // FULL_RECONCILE_INTERVAL: period of the full compare, 0 = off
	// Sync, when set, waits until the change stream has applied everything
	// the source had committed when it was called, so a comparison does not
	// mistake changes in flight for drift.
	Sync func(ctx context.Context) error
	// Pace, when above 0, makes the scheduled window runs rest after each
	// slice for Pace times as long as the slice's reads took (1: the run
	// reads at most half the time), so a run spreads its load over a few
	// seconds instead of taking the databases' CPU in one burst, which
	// would delay the live stream. One-shot runs (Window, Range) never rest.
	Pace   float64
	Logger *slog.Logger

	afterCompare func() // test hook: runs between compare and repair
	sliceRows    int    // test hook: rows per window slice (0: sliceRows)
	rowsAtOnce   int    // test hook: most rows a side a slice reads row by row (0: rowsAtOnce)
}

// Stats describe the reconciler's work since start.
type Stats struct {
	Runs        atomic.Int64
	FullRuns    atomic.Int64
	LastRun     atomic.Int64 // unix ns of the last run's end
	LastRunTook atomic.Int64 // ns
	Checked     atomic.Int64 // rows compared, both sides
	Missing     atomic.Int64
	Stale       atomic.Int64
	Extra       atomic.Int64
	Failures    atomic.Int64
	// LastRepair is the unix ns of the end of the last scheduled run that
	// repaired rows (the stream had not delivered them), and
	// LastRepairRows how many it repaired.
	LastRepair     atomic.Int64
	LastRepairRows atomic.Int64
}

// Reconciler compares the source and chat tables and repairs differences
// through the sink: every Interval over the recent updated_at window, and
// every FullInterval over the whole table.
type Reconciler struct {
	src, chat Side
	repairer  change.Sink
	opts      Options
	log       *slog.Logger

	// Stats is updated after every run.
	Stats Stats

	hashMu     sync.Mutex
	hashChosen bool // chooseHash has set the sides' recordHash
}

// New returns a reconciler of src against chat.
func New(src, chat Side, repairer change.Sink, opts Options) *Reconciler {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	src.Name, chat.Name = "source", "chat"
	return &Reconciler{src: src, chat: chat, repairer: repairer, opts: opts, log: opts.Logger.With("component", "reconciler")}
}

// Result is what one run found and did.
type Result struct {
	Full    bool
	Checked int64 // rows compared, both sides
	Found   int   // keys whose hashes differed
	Repair  change.RepairResult
	Slices  int           // slices of updated_at a window run read
	Rested  time.Duration // time a paced run paused between slices
	Took    time.Duration

	fetched int64 // rows whose hashes were read into memory (small slices, buckets that differed)
}

// Run reconciles until ctx ends. Runs never overlap: the next one is
// scheduled one interval after the previous one ends. A run slower than 80 %
// of the interval is logged at WARN; a failed run at ERROR (and retried at
// the next interval).
func (r *Reconciler) Run(ctx context.Context) error {
	lastFull := time.Now()
	timer := time.NewTimer(r.opts.Interval)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		}
		full := r.opts.FullInterval > 0 && time.Since(lastFull) >= r.opts.FullInterval
		var res Result
		var err error
		if full {
			res, err = r.Full(ctx, false)
			lastFull = time.Now()
		} else {
			res, err = r.window(ctx, time.Duration(float64(r.opts.Interval)*r.opts.Multiplier), false, r.opts.Pace)
		}
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			r.Stats.Failures.Add(1)
			r.log.Error("reconcile run failed; next run in one interval", "err", err)
		case res.Repair.Repairs() > 0:
			// The stream (or, in notify mode, the listener and its
			// catch-ups) should leave nothing to repair: this is a signal.
			r.Stats.LastRepair.Store(time.Now().UnixNano())
			r.Stats.LastRepairRows.Store(int64(res.Repair.Repairs()))
			r.log.Warn("the scheduled reconciler repaired rows the change stream had not delivered: something else writes chat's synced columns, the source's publication or trigger changed, or cdc has a bug (cdc verify --full compares the whole table)",
				"repaired", res.Repair.Repairs(), "missing", res.Repair.Missing, "stale", res.Repair.Stale, "extra", res.Repair.Extra, "full", res.Full)
		case res.Took > r.opts.Interval*8/10:
			r.log.Warn("reconcile run took more than 80% of the interval: runs are spaced one interval apart, so the window still covers every row, but consider a longer SYNC_INTERVAL_MINUTES",
				"took", res.Took.Round(time.Millisecond).String(), "interval", r.opts.Interval.String(), "full", res.Full)
		}
		timer.Reset(r.opts.Interval)
	}
}

// Full compares the whole table by key-range checksums and repairs what
// differs, unless dryRun.
func (r *Reconciler) Full(ctx context.Context, dryRun bool) (Result, error) {
	start := time.Now()
	res := Result{Full: true}
	if err := r.chooseHash(ctx); err != nil {
		return res, err
	}
	if err := r.sync(ctx); err != nil {
		return res, err
	}
	d, srcRows, chatRows, err := bucketDiff(ctx, r.src, r.chat, "", nil)
	if err != nil {
		return res, err
	}
	res.Checked = srcRows + chatRows
	return r.finish(ctx, res, d, start, dryRun, "full", "source_rows", srcRows, "chat_rows", chatRows)
}

// sync waits for the change stream, when there is one, for up to half an
// interval; a stream that is behind only makes this run repair more.
func (r *Reconciler) sync(ctx context.Context) error {
	return r.newSyncer().wait(ctx)
}

// syncer waits for the change stream before each comparison of one run.
// The waits of a run share one budget (half an interval, at least 2 s), so
// a stream that is behind costs a run one timeout, not one per slice.
type syncer struct {
	r      *Reconciler
	wait0  time.Duration
	until  time.Time
	behind bool
}

func (r *Reconciler) newSyncer() *syncer {
	wait := max(r.opts.Interval/2, 2*time.Second)
	return &syncer{r: r, wait0: wait, until: time.Now().Add(wait)}
}

func (s *syncer) wait(ctx context.Context) error {
	if s.r.opts.Sync == nil || s.behind {
		return nil
	}
	sctx, cancel := context.WithDeadline(ctx, s.until)
	defer cancel()
	if err := s.r.opts.Sync(sctx); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		s.behind = true
		s.r.log.Warn("change stream is behind; comparing anyway", "waited", s.wait0.String(), "err", err)
	}
	return nil
}

// progressEvery is how often a long repair reports progress.
const progressEvery = 5 * time.Second

// repairChunk bounds how many keys one repair transaction (which holds the
// writer lock, pausing the stream) handles.
const repairChunk = 1000

func (r *Reconciler) finish(ctx context.Context, res Result, d differences, start time.Time, dryRun bool, kind string, attrs ...any) (Result, error) {
	if r.opts.afterCompare != nil {
		r.opts.afterCompare()
	}
	keys := d.keys()
	res.Found = len(keys)
	if !dryRun && len(keys) > 0 {
		// Under write load many of these differ only because the row
		// changed between the two reads. Look again, outside the writer
		// lock, so repairs (which pause the stream) are only for rows that
		// still differ.
		var same int
		var err error
		if keys, same, err = r.stillDiffering(ctx, keys); err != nil {
			return res, err
		}
		res.Repair.Same += same
	}
	fetch := keyed.PoolFetch(r.src.Pool, r.src.Table)
	lastReport := time.Now()
	for i := 0; i < len(keys); i += repairChunk {
		if time.Since(lastReport) >= progressEvery {
			lastReport = time.Now()
			rate := float64(i) / max(time.Since(start).Seconds(), 1e-3)
			r.log.Info("reconcile in progress", "kind", kind, "repaired", res.Repair.Repairs(), "rows_done", i, "rows_to_do", len(keys),
				"rows_per_sec", int64(rate), "eta", (time.Duration(float64(len(keys)-i)/max(rate, 1)) * time.Second).Round(time.Second).String())
		}
		chunk := keys[i:min(i+repairChunk, len(keys))]
		var part change.RepairResult
		var err error
		if dryRun {
			part, err = r.classify(ctx, chunk)
		} else {
			part, err = r.repairer.Repair(ctx, chunk, fetch)
		}
		if err != nil {
			return res, err
		}
		res.Repair = res.Repair.Add(part)
	}
	res.Took = time.Since(start)
	r.record(res, dryRun)
	args := append([]any{"checked", res.Checked, "missing", res.Repair.Missing, "stale", res.Repair.Stale, "extra", res.Repair.Extra,
		"already_equal", res.Repair.Same, "refused", res.Repair.Dead, "took", res.Took.Round(time.Millisecond).String(), "dry_run", dryRun}, attrs...)
	r.log.Info("reconcile "+kind, args...)
	return res, nil
}

func (r *Reconciler) record(res Result, dryRun bool) {
	r.Stats.Runs.Add(1)
	if res.Full {
		r.Stats.FullRuns.Add(1)
	}
	r.Stats.LastRun.Store(time.Now().UnixNano())
	r.Stats.LastRunTook.Store(int64(res.Took))
	r.Stats.Checked.Add(res.Checked)
	if !dryRun {
		r.Stats.Missing.Add(int64(res.Repair.Missing))
		r.Stats.Stale.Add(int64(res.Repair.Stale))
		r.Stats.Extra.Add(int64(res.Repair.Extra))
	}
}

// readBoth reads keys on both sides, outside any lock.
func (r *Reconciler) readBoth(ctx context.Context, keys [][]byte) (src, chat map[string][][]byte, err error) {
	if src, err = keyed.PoolFetch(r.src.Pool, r.src.Table)(ctx, keys); err != nil {
		return nil, nil, err
	}
	chat, err = keyed.PoolFetch(r.chat.Pool, r.chat.Table)(ctx, keys)
	return src, chat, err
}

// kinds reads keys again on both sides, outside any lock, a repair chunk
// at a time, and calls fn with each key's kind of difference ("" when the
// two sides are equal).
func (r *Reconciler) kinds(ctx context.Context, keys [][]byte, fn func(key []byte, kind string)) error {
	for i := 0; i < len(keys); i += repairChunk {
		chunk := keys[i:min(i+repairChunk, len(keys))]
		src, chat, err := r.readBoth(ctx, chunk)
		if err != nil {
			return fmt.Errorf("read differing rows again: %w", err)
		}
		for _, k := range chunk {
			fn(k, keyed.KindOf(k, src, chat))
		}
	}
	return nil
}

// stillDiffering waits for the change stream, reads keys again on both
// sides, and returns those that still differ and how many are now equal.
func (r *Reconciler) stillDiffering(ctx context.Context, keys [][]byte) (differ [][]byte, same int, err error) {
	if err := r.sync(ctx); err != nil {
		return nil, 0, err
	}
	err = r.kinds(ctx, keys, func(k []byte, kind string) {
		if kind == "" {
			same++
		} else {
			differ = append(differ, k)
		}
	})
	return differ, same, err
}

// classify is a dry-run repair: it reads both sides and counts, writing
// nothing.
func (r *Reconciler) classify(ctx context.Context, keys [][]byte) (change.RepairResult, error) {
	src, chat, err := r.readBoth(ctx, keys)
	if err != nil {
		return change.RepairResult{}, err
	}
	res, _ := keyed.Plan(r.chat.Table, keys, src, chat)
	return res, nil
}
