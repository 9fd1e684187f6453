package sink

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/myusta/cdc/change"
)

// SourceTimeline is the source's timeline the stream last recorded for
// this slot (cdc_source); ok is false when none is.
func (s *Sink) SourceTimeline(ctx context.Context) (t change.Timeline, ok bool, err error) {
	err = s.pool.QueryRow(ctx, "SELECT timeline, promotion_keeps FROM cdc_source WHERE slot_name = $1", s.opts.Slot).Scan(&t.ID, &t.Keeps)
	if errors.Is(err, pgx.ErrNoRows) {
		return t, false, nil
	}
	if err != nil {
		return t, false, fmt.Errorf("read cdc_source: %w", err)
	}
	return t, true, nil
}

// StoreSourceTimeline records t for this slot.
func (s *Sink) StoreSourceTimeline(ctx context.Context, t change.Timeline) error {
	_, err := s.pool.Exec(ctx, `INSERT INTO cdc_source (slot_name, timeline, promotion_keeps) VALUES ($1, $2, $3)
ON CONFLICT (slot_name) DO UPDATE SET timeline = EXCLUDED.timeline, promotion_keeps = EXCLUDED.promotion_keeps, updated_at = now()
WHERE (cdc_source.timeline, cdc_source.promotion_keeps) IS DISTINCT FROM (EXCLUDED.timeline, EXCLUDED.promotion_keeps)`, s.opts.Slot, t.ID, t.Keeps)
	if err != nil {
		return fmt.Errorf("record the source's timeline: %w", err)
	}
	return nil
}
