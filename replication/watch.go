package replication

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/myusta/cdc/internal/ident"
	"github.com/myusta/cdc/internal/schema"
	"github.com/myusta/cdc/migrations"
)

// WatchOptions configure a Watch.
type WatchOptions struct {
	Pool *pgxpool.Pool // the source
	// Primary is where the source's objects are restored when the source
	// is a hot standby (nil: Pool).
	Primary *pgxpool.Pool
	Table   *schema.Table   // the source table as cdc follows it (OID and attnums identify it)
	Spec    migrations.Spec // what cdc migrate converges the source to
	// Notify selects the notify-mode objects (the trigger) instead of
	// replication mode's (the publication).
	Notify bool
	Every  time.Duration
	// Repair makes up for the changes the source may not have delivered
	// since since (a windowed compare from then and a full compare).
	Repair func(ctx context.Context, since time.Time) error
	// Reload asks for the sync to start again with spec: the source table
	// or a synced column was renamed, or a synced column dropped, and cdc
	// follows it. Repair runs after the restart, from since.
	Reload func(spec migrations.Spec, since time.Time, why string)
	// Recorded reads chat's record of the synced columns (cdc_columns):
	// when cdc migrate changed it, the watch follows the new SYNC_COLUMNS.
	Recorded func(ctx context.Context) (map[string]migrations.SyncedColumn, error)
	// RepairSince, when not zero, is a repair the previous run of the sync
	// asked for (Reload): it runs first.
	RepairSince time.Time
	// Drift records what the watch finds, for health; it outlives one
	// run of the sync (a Reload starts another watch with it).
	Drift  *Drift
	Logger *slog.Logger
}

// Drift is what is wrong with cdc's objects on the source now, and what
// was last found wrong. Its methods are safe for concurrent use.
type Drift struct {
	mu        sync.Mutex
	now, last string
	lastAt    time.Time
}

func (d *Drift) set(msg string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.now == "" {
		d.lastAt = time.Now()
	}
	d.now, d.last = msg, msg
}

func (d *Drift) clear() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.now = ""
}

// Report returns what is wrong now ("" when nothing is), what was last
// found wrong, and when that was first seen.
func (d *Drift) Report() (now, last string, lastAt time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.now, d.last, d.lastAt
}

// Watch checks, every Every and whenever Kick is called (the stream
// reconnected), that the source still holds what cdc needs as cdc set it
// up: the publication publishes the table with the synced columns
// (replication mode), the notify trigger exists and is enabled (notify
// mode), the table and its synced columns keep their names and types.
// What changed is an ERROR naming it, and in Drift (for health) until it
// is put right. cdc's own objects it restores when its role may, then repairs
// what the source did not deliver meanwhile; a table or column renamed, or
// a column dropped, it follows (Reload). Otherwise it says what to run.
type Watch struct {
	opts WatchOptions
	log  *slog.Logger
	kick chan struct{}

	lastOK   time.Time // when the last check found everything in place
	gapSince time.Time // start of a gap not yet repaired; zero when none
}

// NewWatch returns a watch; Run starts it.
func NewWatch(opts WatchOptions) *Watch {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Drift == nil {
		opts.Drift = &Drift{}
	}
	return &Watch{opts: opts, log: opts.Logger.With("component", "watch"), kick: make(chan struct{}, 1), lastOK: time.Now()}
}

// Kick asks for a check now.
func (w *Watch) Kick() {
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

// Run checks until ctx ends.
func (w *Watch) Run(ctx context.Context) {
	if w.gapSince = w.opts.RepairSince; !w.gapSince.IsZero() {
		w.repair(ctx)
	}
	t := time.NewTicker(w.opts.Every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-w.kick:
		}
		if err := w.check(ctx); err != nil && ctx.Err() == nil {
			w.log.Warn("checking the source's objects failed; trying again", "err", err)
		}
	}
}

// drift is what a check found changed.
type drift struct {
	problems []string        // for people
	restore  bool            // cdc's publication or trigger needs restoring
	spec     migrations.Spec // what the sync should follow now (renames, drops)
	follow   bool            // spec differs from the one in use
	fatal    string          // what cdc cannot follow, with what to run
	nums     []int16         // attnums of the synced columns still there, sorted
}

// liveColumn is a synced column as the source's catalog has it now.
type liveColumn struct {
	name    string
	typ     uint32
	dropped bool
}

func (w *Watch) check(ctx context.Context) error {
	if spec, why, err := w.migrated(ctx); err != nil || why != "" {
		if why != "" {
			w.log.Warn("cdc migrate changed the synced columns ("+why+"): following, the sync starts again with them", "sync_columns", syncColumns(spec))
			w.opts.Reload(spec, w.gapSince, "following cdc migrate's change of SYNC_COLUMNS ("+why+")")
		}
		return err
	}
	d, err := w.inspect(ctx)
	if err != nil {
		return err
	}
	if len(d.problems) == 0 {
		if !w.gapSince.IsZero() {
			w.repair(ctx) // an earlier repair failed
			return nil
		}
		w.opts.Drift.clear()
		w.lastOK = time.Now()
		return nil
	}
	if w.gapSince.IsZero() {
		w.gapSince = w.lastOK
	}
	msg := strings.Join(d.problems, "; ")
	w.log.Error("cdc's objects on the source changed: "+msg, "since", w.gapSince.UTC().Format(time.RFC3339))
	if d.fatal != "" {
		w.opts.Drift.set(msg)
		w.log.Error("cdc cannot follow this change by itself: " + d.fatal)
		return nil
	}
	if d.restore {
		// Health shows the drift once with the outcome of the restore,
		// never a half-told state in between.
		if err := w.restore(ctx, d.spec); err != nil {
			w.opts.Drift.set(msg + "; " + err.Error())
			w.log.Error("cannot restore cdc's objects on the source: "+err.Error(), "fix", w.fixHint())
			return nil
		}
	}
	w.opts.Drift.set(msg)
	if d.follow {
		w.log.Warn("following the change: the sync starts again with the source's new names; update the configuration to match (SOURCE_TABLE, SYNC_COLUMNS) so the next start agrees",
			"table", d.spec.SourceTable.String(), "sync_columns", syncColumns(d.spec))
		w.opts.Reload(d.spec, w.gapSince, "following a change of the source table")
		return nil
	}
	w.repair(ctx)
	return nil
}

// repair runs Repair for the gap that began at gapSince and, when it
// succeeds, closes the gap.
func (w *Watch) repair(ctx context.Context) {
	w.log.Warn("repairing what the source may not have delivered while its objects were changed", "since", w.gapSince.UTC().Format(time.RFC3339))
	if err := w.opts.Repair(ctx, w.gapSince); err != nil {
		if ctx.Err() == nil {
			msg := "repairing the gap failed (" + err.Error() + "); the next check tries again"
			w.opts.Drift.set(msg)
			w.log.Error(msg)
		}
		return
	}
	w.gapSince = time.Time{}
	w.opts.Drift.clear()
	w.lastOK = time.Now()
	w.log.Info("the source's objects are in place again and chat is repaired")
}

// migrated compares chat's record of the synced columns with the ones the
// sync follows: when cdc migrate changed the record (SYNC_COLUMNS gained
// or lost columns), it returns the spec to follow and what changed.
func (w *Watch) migrated(ctx context.Context) (migrations.Spec, string, error) {
	spec := w.opts.Spec
	if w.opts.Recorded == nil {
		return spec, "", nil
	}
	rec, err := w.opts.Recorded(ctx)
	if err != nil || len(rec) == 0 {
		return spec, "", err
	}
	var cols, chat, removed, added []string
	for i, c := range spec.ChatColumns {
		if _, ok := rec[c]; ok {
			cols, chat = append(cols, spec.Columns[i]), append(chat, c)
		} else {
			removed = append(removed, ident.Display(c))
		}
	}
	for _, c := range slices.Sorted(maps.Keys(rec)) {
		if !slices.Contains(spec.ChatColumns, c) {
			cols, chat = append(cols, rec[c].Source), append(chat, c)
			added = append(added, ident.Display(c))
		}
	}
	if len(added)+len(removed) == 0 {
		return spec, "", nil
	}
	var why []string
	if len(added) > 0 {
		why = append(why, "added "+strings.Join(added, ", "))
	}
	if len(removed) > 0 {
		why = append(why, "removed "+strings.Join(removed, ", ")+"; chat keeps those columns, chat's own from now on")
	}
	spec.Columns, spec.ChatColumns = cols, chat
	return spec, strings.Join(why, "; "), nil
}

// syncColumns renders spec's column list in SYNC_COLUMNS syntax.
func syncColumns(spec migrations.Spec) string {
	parts := make([]string, len(spec.Columns))
	for i, c := range spec.Columns {
		parts[i] = ident.Display(c)
		if spec.ChatColumns[i] != c {
			parts[i] += " AS " + ident.Display(spec.ChatColumns[i])
		}
	}
	return strings.Join(parts, ", ")
}

func (w *Watch) fixHint() string {
	if w.opts.Notify {
		return "run cdc migrate with SYNC_MODE=notify as a role that may create triggers on the table"
	}
	return "run cdc migrate as a role that owns the table (it restores the publication)"
}

// restore puts cdc's publication or trigger back as spec has them.
func (w *Watch) restore(ctx context.Context, spec migrations.Spec) error {
	var msg string
	var err error
	pool := w.opts.Pool
	if w.opts.Primary != nil {
		pool = w.opts.Primary
	}
	if w.opts.Notify {
		msg, err = migrations.EnsureNotifyTrigger(ctx, pool, spec)
		if msg == "" && err == nil {
			msg = "enabled trigger " + migrations.NotifyTrigger
		}
	} else {
		msg, err = migrations.EnsurePublication(ctx, pool, spec)
	}
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "42501" {
			return fmt.Errorf("its role may not (%s)", pgErr.Message)
		}
		return err
	}
	w.log.Warn("restored cdc's objects on the source: " + msg)
	return nil
}

// inspect compares the source's catalog with what cdc follows.
func (w *Watch) inspect(ctx context.Context) (drift, error) {
	t := w.opts.Table
	d := drift{spec: w.opts.Spec}
	var schemaName, name string
	err := w.opts.Pool.QueryRow(ctx, "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = $1", t.OID).Scan(&schemaName, &name)
	if errors.Is(err, pgx.ErrNoRows) {
		d.problems = append(d.problems, fmt.Sprintf("table %s was dropped", t))
		d.fatal = "create it again and restart cdc (the next start copies it)"
		return d, nil
	}
	if err != nil {
		return d, fmt.Errorf("look up the source table: %w", err)
	}
	if now := (ident.Table{Schema: schemaName, Name: name}); now != t.Table {
		d.problems = append(d.problems, fmt.Sprintf("table %s was renamed to %s", t, now))
		d.spec.SourceTable, d.follow = now, true
	}
	if err := w.inspectColumns(ctx, &d); err != nil {
		return d, err
	}
	if d.fatal != "" {
		return d, nil
	}
	if w.opts.Notify {
		ok, err := migrations.NotifyTriggerExists(ctx, w.opts.Pool, d.spec.SourceTable)
		if err != nil {
			return d, err
		}
		if !ok {
			d.problems = append(d.problems, fmt.Sprintf("the notify trigger %s on %s is gone or disabled: changes are not notified", migrations.NotifyTrigger, d.spec.SourceTable))
			d.restore = true
		}
		return d, nil
	}
	return d, w.inspectPublication(ctx, &d)
}

// inspectColumns finds the synced columns by attnum: dropped ones leave
// the sync (chat keeps its column), renamed ones are followed, a changed
// type or a gone key or updated_at column is for people to fix.
func (w *Watch) inspectColumns(ctx context.Context, d *drift) error {
	t := w.opts.Table
	nums := make([]int16, len(t.Columns))
	for i, c := range t.Columns {
		nums[i] = c.Num
	}
	rows, err := w.opts.Pool.Query(ctx, "SELECT attnum, attname, atttypid, attisdropped FROM pg_attribute WHERE attrelid = $1 AND attnum = ANY($2)", t.OID, nums)
	if err != nil {
		return fmt.Errorf("read the source table's columns: %w", err)
	}
	now := map[int16]liveColumn{}
	for rows.Next() {
		var n int16
		var c liveColumn
		if err := rows.Scan(&n, &c.name, &c.typ, &c.dropped); err != nil {
			rows.Close()
			return err
		}
		now[n] = c
	}
	if err := rows.Err(); err != nil {
		return err
	}
	var cols, chatCols []string
	for i, c := range t.Columns {
		cur, ok := now[c.Num]
		chat := w.opts.Spec.ChatColumns[i]
		switch {
		case !ok || cur.dropped:
			d.problems = append(d.problems, fmt.Sprintf("synced column %s was dropped from the source table; chat's column %s stays, chat's own from now on", ident.Display(c.Name), ident.Display(chat)))
			if t.IsKey(i) || i == t.UpdatedAt {
				d.fatal = "the key and the updated_at column cannot leave the sync: set KEY_COLUMNS or UPDATED_AT_COLUMN and restart"
			}
			d.follow, d.restore = true, true
			continue
		case cur.typ != c.TypeOID:
			d.problems = append(d.problems, fmt.Sprintf("synced column %s changed type on the source (%s before)", ident.Display(c.Name), c.Display))
			d.fatal = "follow README's \"Living with backend migrations\" for a type change: take the column out of SYNC_COLUMNS and run cdc migrate first"
		case cur.name != c.Name:
			d.problems = append(d.problems, fmt.Sprintf("synced column %s was renamed to %s on the source", ident.Display(c.Name), ident.Display(cur.name)))
			d.follow = true
		}
		cols, chatCols = append(cols, cur.name), append(chatCols, chat)
		d.nums = append(d.nums, c.Num)
	}
	slices.Sort(d.nums)
	d.spec.Columns, d.spec.ChatColumns = cols, chatCols
	d.spec.UpdatedAt = renamedTo(t, w.opts.Spec.UpdatedAt, now)
	if w.opts.Spec.Key != nil {
		key := make([]string, len(w.opts.Spec.Key))
		for i, k := range w.opts.Spec.Key {
			key[i] = renamedTo(t, k, now)
		}
		d.spec.Key = key
	}
	return nil
}

// renamedTo is column name's current name (found by attnum), or name.
func renamedTo(t *schema.Table, name string, now map[int16]liveColumn) string {
	if i := t.Index(name); i >= 0 {
		if c, ok := now[t.Columns[i].Num]; ok && !c.dropped {
			return c.name
		}
	}
	return name
}

// inspectPublication checks that the publication publishes the table with
// exactly the synced columns.
func (w *Watch) inspectPublication(ctx context.Context, d *drift) error {
	pub := w.opts.Spec.Publication
	var exists, in bool
	var attrs []int16
	err := w.opts.Pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1), pr.prrelid IS NOT NULL, pr.prattrs::int2[]
FROM (SELECT 1) one LEFT JOIN (pg_publication_rel pr JOIN pg_publication p ON p.oid = pr.prpubid AND p.pubname = $1) ON pr.prrelid = $2`,
		pub, w.opts.Table.OID).Scan(&exists, &in, &attrs)
	if err != nil {
		return fmt.Errorf("read publication %s: %w", pub, err)
	}
	switch {
	case !exists:
		d.problems = append(d.problems, fmt.Sprintf("publication %s was dropped: no change reaches chat", ident.Display(pub)))
		d.restore = true
	case !in:
		d.problems = append(d.problems, fmt.Sprintf("table %s was taken out of publication %s (a DROP COLUMN … CASCADE does that): no change reaches chat", d.spec.SourceTable, ident.Display(pub)))
		d.restore = true
	default:
		slices.Sort(attrs)
		if attrs == nil || !slices.Equal(attrs, d.nums) {
			d.problems = append(d.problems, fmt.Sprintf("publication %s no longer publishes exactly the synced columns of %s", ident.Display(pub), d.spec.SourceTable))
			d.restore = true
		}
	}
	return nil
}
