package replication

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// SlotHealth is the state of cdc's replication slot on the source, as
// pg_replication_slots reports it.
type SlotHealth struct {
	Exists    bool
	Active    bool
	WALStatus string // reserved, extended, unreserved or lost
	// RetainedBytes is the WAL the slot keeps on the source's disk
	// (current position − restart_lsn).
	RetainedBytes int64
	// LagBytes is the WAL not yet confirmed (current position −
	// confirmed_flush_lsn).
	LagBytes int64
	// SafeWALBytes is how much more WAL may be written before the slot is
	// invalidated by max_slot_wal_keep_size; -1 when there is no limit.
	SafeWALBytes int64
	CheckedAt    time.Time
	// Promotion says what a promotion of a standby would cost the slot
	// (see Promotion).
	Promotion string
}

// ReadSlotHealth reads the slot's row of pg_replication_slots.
func ReadSlotHealth(ctx context.Context, pool *pgxpool.Pool, slot string) (SlotHealth, error) {
	h := SlotHealth{CheckedAt: time.Now()}
	var safe *int64
	err := pool.QueryRow(ctx, `SELECT active, COALESCE(wal_status, ''),
       COALESCE(pg_wal_lsn_diff(`+positionSQL+`, restart_lsn), 0)::bigint,
       COALESCE(pg_wal_lsn_diff(`+positionSQL+`, confirmed_flush_lsn), 0)::bigint,
       safe_wal_size
FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&h.Active, &h.WALStatus, &h.RetainedBytes, &h.LagBytes, &safe)
	if errors.Is(err, pgx.ErrNoRows) {
		return h, nil
	}
	if err != nil {
		return h, fmt.Errorf("read slot %s: %w", slot, err)
	}
	h.Exists = true
	h.SafeWALBytes = -1
	if safe != nil {
		h.SafeWALBytes = *safe
	}
	p, err := ReadPromotion(ctx, pool, slot)
	if err != nil {
		return h, err
	}
	h.Promotion = p.String()
	return h, nil
}

// SlotWatcher polls the slot's health and warns when it holds more WAL
// than WarnBytes, when the server starts removing the WAL it needs
// (wal_status unreserved) and when it is lost. The stream itself recreates
// a lost slot on its next connect.
type SlotWatcher struct {
	Pool      *pgxpool.Pool
	Slot      string
	WarnBytes int64
	Every     time.Duration
	Logger    *slog.Logger

	last atomic.Pointer[SlotHealth]
}

// Last returns the most recent reading (zero before the first).
func (w *SlotWatcher) Last() SlotHealth {
	if h := w.last.Load(); h != nil {
		return *h
	}
	return SlotHealth{}
}

// Run polls until ctx ends.
func (w *SlotWatcher) Run(ctx context.Context) {
	log := w.Logger.With("component", "slot", "slot", w.Slot)
	warned, promotion := "", ""
	t := time.NewTicker(w.Every)
	defer t.Stop()
	for {
		h, err := ReadSlotHealth(ctx, w.Pool, w.Slot)
		if err == nil {
			w.last.Store(&h)
			if h.Promotion != promotion && h.Exists {
				log.Info(h.Promotion)
				promotion = h.Promotion
			}
			state := slotWarning(h, w.WarnBytes)
			if state != warned {
				switch state {
				case "":
					log.Info("replication slot healthy again", "retained_bytes", h.RetainedBytes, "wal_status", h.WALStatus)
				case "lost":
					log.Error("replication slot invalidated (wal_status=lost): the source removed WAL cdc had not confirmed; cdc recreates the slot and copies the table again on its next connect",
						"retained_bytes", h.RetainedBytes)
				case "unreserved":
					log.Error("replication slot is about to be invalidated (wal_status=unreserved): cdc is too far behind for max_slot_wal_keep_size",
						"retained_bytes", h.RetainedBytes, "safe_wal_bytes", h.SafeWALBytes)
				case "retained":
					log.Warn("replication slot holds much WAL on the source: cdc is behind or stopped; check the chat database and cdc's log (threshold SLOT_WAL_WARN_MB)",
						"retained_bytes", h.RetainedBytes, "threshold_bytes", w.WarnBytes, "safe_wal_bytes", h.SafeWALBytes)
				}
				warned = state
			}
		} else if ctx.Err() == nil {
			log.Debug("slot health check failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// slotWarning names what is wrong with h, or "" when nothing is.
func slotWarning(h SlotHealth, warnBytes int64) string {
	switch {
	case !h.Exists:
		return ""
	case h.WALStatus == "lost":
		return "lost"
	case h.WALStatus == "unreserved":
		return "unreserved"
	case h.RetainedBytes > warnBytes:
		return "retained"
	}
	return ""
}
