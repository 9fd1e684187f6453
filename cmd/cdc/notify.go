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
type notifySource struct{ *replication.Notify }

// newNotifySource builds the notify-mode source. Its catch-up after every
// (re)connect goes through the reconciler, which rec returns once built:
//   - first connect: an empty chat table gets the bulk copy; a populated one
//     a full compare (it may be behind, e.g. after running in another mode);
//   - reconnect after a gap: the updated_at window since the last
//     notification (plus one reconcile window of margin for transactions
//     that committed after they stamped updated_at), then a full compare,
//     because deletes leave nothing in any window.
func newNotifySource(cfg *config.Config, log *slog.Logger, pool *pgxpool.Pool, sk *sink.Sink, table *schema.Table,
	rec func() *reconcile.Reconciler, onBatch func(change.BatchInfo), onConnect func()) *notifySource {
	var n *replication.Notify
	catchUp := func(ctx context.Context, missed time.Duration) error {
		onConnect()
		r := rec()
		if missed == 0 {
			empty, err := sk.Empty(ctx)
			if err != nil {
				return err
			}
			if empty {
				return n.CopyAll(ctx)
			}
			if _, err := r.Full(ctx, false); err != nil {
				return fmt.Errorf("full compare at start: %w", err)
			}
			return nil
		}
		margin := time.Duration(float64(cfg.SyncInterval) * cfg.WindowMultiplier)
		if _, err := r.Window(ctx, missed+margin, false); err != nil {
			return fmt.Errorf("reconcile the missed window: %w", err)
		}
		if _, err := r.Full(ctx, false); err != nil {
			return fmt.Errorf("full compare after reconnect: %w", err)
		}
		return nil
	}
	n = replication.NewNotify(pool, sk, replication.NotifyOptions{
		SourceURL:    cfg.SourceURL,
		Table:        table,
		BatchMaxRows: cfg.BatchMaxRows,
		Retry:        reconnectPolicy(cfg),
		CatchUp:      catchUp,
		OnBatch:      onBatch,
		Logger:       log,
	})
	return &notifySource{n}
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
