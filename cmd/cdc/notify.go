package main

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/myusta/cdc/change"
	"github.com/myusta/cdc/internal/config"
	"github.com/myusta/cdc/internal/schema"
	"github.com/myusta/cdc/reconcile"
	"github.com/myusta/cdc/replication"
	"github.com/myusta/cdc/sink"
)

// notifySource is the notify listener as a daemonSource.
type notifySource struct {
	*replication.Notify
	cfg  *config.Config
	sink *sink.Sink
}

// newNotifySource builds the notify-mode source; attach gives it its
// catch-up before it runs.
func newNotifySource(cfg *config.Config, log *slog.Logger, pool *pgxpool.Pool, sk *sink.Sink, table *schema.Table,
	onBatch func(change.BatchInfo)) *notifySource {
	return &notifySource{Notify: replication.NewNotify(pool, sk, replication.NotifyOptions{
		SourceURL:    cfg.SourceURL,
		Table:        table,
		BatchMaxRows: cfg.BatchMaxRows,
		Retry:        reconnectPolicy(cfg),
		OnBatch:      onBatch,
		Logger:       log,
	}), cfg: cfg, sink: sk}
}

// attach makes up for lost notifications after every (re)connect through
// the reconciler rec (onConnect runs first):
//   - first connect: an empty chat table gets the bulk copy; a populated one
//     a full compare (it may be behind, e.g. after running in another mode);
//   - reconnect after a gap: the updated_at window since the last
//     notification (plus one reconcile window of margin for transactions
//     that committed after they stamped updated_at), then a full compare,
//     because deletes leave nothing in any window.
func (s *notifySource) attach(rec *reconcile.Reconciler, onConnect func()) {
	s.CatchUp = func(ctx context.Context, missed time.Duration) error {
		onConnect()
		if missed == 0 {
			empty, err := s.sink.Empty(ctx)
			if err != nil {
				return err
			}
			if empty {
				return s.CopyAll(ctx)
			}
			if _, err := rec.Full(ctx, false); err != nil {
				return fmt.Errorf("full compare at start: %w", err)
			}
			return nil
		}
		margin := time.Duration(float64(s.cfg.SyncInterval) * s.cfg.WindowMultiplier)
		if _, err := rec.Window(ctx, missed+margin, false); err != nil {
			return fmt.Errorf("reconcile the missed window: %w", err)
		}
		if _, err := rec.Full(ctx, false); err != nil {
			return fmt.Errorf("full compare after reconnect: %w", err)
		}
		return nil
	}
}

func (s *notifySource) progress() ([]int64, []any) {
	st := &s.Stats
	return []int64{st.Notifications.Load(), st.Upserts.Load(), st.Deletes.Load()},
		[]any{"latency_ms", time.Duration(st.Latency.Load()).Milliseconds()}
}

func (s *notifySource) final() []any {
	st := &s.Stats
	return []any{"notifications", st.Notifications.Load(), "rows_upserted_by_notify", st.Upserts.Load(),
		"rows_deleted_by_notify", st.Deletes.Load(), "truncates", st.Truncates.Load(), "reconnects", st.Reconnects.Load(),
		"catch_ups", s.CatchUps.Load()}
}
