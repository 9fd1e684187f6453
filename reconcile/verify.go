package reconcile

import (
	"context"
	"fmt"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/myusta/cdc/internal/keyed"
	"github.com/myusta/cdc/internal/schema"
)

// Drifted is one row that differs.
type Drifted struct {
	ID   string `json:"id"`
	Kind string `json:"kind"` // missing, stale or extra
}

// Report is what Verify found. It writes nothing.
type Report struct {
	SourceRows            int64     `json:"source_rows"`
	ChatRows              int64     `json:"chat_rows"`
	Difference            int64     `json:"difference"` // chat − source
	SourceUpdatedLastHour int64     `json:"source_updated_last_hour"`
	ChatUpdatedLastHour   int64     `json:"chat_updated_last_hour"`
	Full                  bool      `json:"full"`
	Missing               int       `json:"missing"`
	Stale                 int       `json:"stale"`
	Extra                 int       `json:"extra"`
	Drifted               []Drifted `json:"drifted,omitempty"` // up to 20
	Consistent            bool      `json:"consistent"`
	TookMS                int64     `json:"took_ms"`
}

// maxDrifted bounds the ids a report names.
const maxDrifted = 20

// settle is how long Verify waits before re-checking what it found, so a
// change in flight is not reported as drift.
var settle = 2 * time.Second

// Verify compares row counts and, with full, every row by key-range
// checksums. Differences are re-checked once after a short wait; only those
// that persist count.
func (r *Reconciler) Verify(ctx context.Context, full bool) (Report, error) {
	start := time.Now()
	rep := Report{Full: full}
	if err := r.sync(ctx); err != nil {
		return rep, err
	}
	if !full {
		if err := r.counts(ctx, &rep, true); err != nil {
			return rep, err
		}
		if rep.Difference != 0 {
			// Re-count once: the difference may be changes in flight.
			if err := r.settle(ctx, fmt.Sprintf("row counts differ (source %d, chat %d)", rep.SourceRows, rep.ChatRows)); err != nil {
				return rep, err
			}
			if err := r.sync(ctx); err != nil {
				return rep, err
			}
			if err := r.counts(ctx, &rep, true); err != nil {
				return rep, err
			}
		}
		rep.Consistent = rep.Difference == 0
		rep.TookMS = time.Since(start).Milliseconds()
		return rep, nil
	}
	// The checksum pass counts every row; only the last hour is counted
	// apart (through the updated_at index).
	if err := r.chooseHash(ctx); err != nil {
		return rep, err
	}
	d, srcRows, chatRows, err := bucketDiff(ctx, r.src, r.chat, "", nil)
	if err != nil {
		return rep, err
	}
	if err := r.counts(ctx, &rep, false); err != nil {
		return rep, err
	}
	rep.SourceRows, rep.ChatRows, rep.Difference = srcRows, chatRows, chatRows-srcRows
	if !d.empty() {
		if err := r.settle(ctx, fmt.Sprintf("%d rows differ", len(d.keys()))); err != nil {
			return rep, err
		}
		if err := r.sync(ctx); err != nil {
			return rep, err
		}
	}
	if err := r.recheck(ctx, d.keys(), &rep); err != nil {
		return rep, err
	}
	rep.Consistent = rep.Missing+rep.Stale+rep.Extra == 0
	rep.TookMS = time.Since(start).Milliseconds()
	return rep, nil
}

// settle waits before a second look, saying why: what differs may be
// changes still in flight, and only what persists is drift.
func (r *Reconciler) settle(ctx context.Context, what string) error {
	r.log.Info(what+": looking again in "+settle.String()+", since they may be changes still in flight; only what still differs then is drift", "wait", settle)
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(settle):
		return nil
	}
}

// counts fills the rows updated in the last hour by the source's clock
// and, with totals, the row counts, on both sides.
func (r *Reconciler) counts(ctx context.Context, rep *Report, totals bool) error {
	var since time.Time
	if err := r.src.Pool.QueryRow(ctx, "SELECT now() - interval '1 hour'").Scan(&since); err != nil {
		return fmt.Errorf("read source clock: %w", err)
	}
	g, gctx := errgroup.WithContext(ctx)
	count := func(s Side, total, recent *int64) func() error {
		return func() error {
			col := schema.Quote(s.Table.Columns[s.Table.UpdatedAt].Name)
			if err := s.Pool.QueryRow(gctx, fmt.Sprintf("SELECT count(*) FROM %s WHERE %s >= $1", s.Table.Ident(), col), since).Scan(recent); err != nil {
				return fmt.Errorf("count recent %s rows: %w", s.Name, err)
			}
			if !totals {
				return nil
			}
			if err := s.Pool.QueryRow(gctx, "SELECT count(*) FROM "+s.Table.Ident()).Scan(total); err != nil {
				return fmt.Errorf("count %s rows: %w", s.Name, err)
			}
			return nil
		}
	}
	g.Go(count(r.src, &rep.SourceRows, &rep.SourceUpdatedLastHour))
	g.Go(count(r.chat, &rep.ChatRows, &rep.ChatUpdatedLastHour))
	if err := g.Wait(); err != nil {
		return err
	}
	rep.Difference = rep.ChatRows - rep.SourceRows
	return nil
}

// recheck reads the keys on both sides and records those that differ.
func (r *Reconciler) recheck(ctx context.Context, keys [][]byte, rep *Report) error {
	return r.kinds(ctx, keys, func(k []byte, kind string) {
		switch kind {
		case "":
			return
		case keyed.KindMissing:
			rep.Missing++
		case keyed.KindStale:
			rep.Stale++
		case keyed.KindExtra:
			rep.Extra++
		}
		if len(rep.Drifted) < maxDrifted {
			rep.Drifted = append(rep.Drifted, Drifted{ID: keyed.FormatKey(r.src.Table, k), Kind: kind})
		}
	})
}
