package replication

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Features are the version-dependent server features cdc uses or could
// use, as one source server offers them.
type Features struct {
	Version string // server_version without the distribution's suffix, e.g. "17.6"
	Major   int

	// 16: logical slots on standbys and pgoutput's origin filter.
	SlotOnStandby, OriginFilter bool
	// 17: failover slots (the FAILOVER option, synchronized_standby_slots;
	// cdc creates its slot as one) and pg_replication_slots.inactive_since.
	FailoverSlots, InactiveSince bool
	// 18: stored generated columns in a publication's column list (cdc
	// publishes them when SYNC_COLUMNS names them) and
	// idle_replication_slot_timeout.
	GeneratedColumns, IdleSlotTimeoutSetting bool
	// IdleSlotTimeout is idle_replication_slot_timeout as the server
	// shows it ("" before 18), and IdleSlotTimeoutAfter its value: after
	// that long without a consumer the server invalidates a slot (0: never).
	IdleSlotTimeout      string
	IdleSlotTimeoutAfter time.Duration
}

// ReadFeatures reads the source's version (the server_version the
// connection reported, as serverMajor does) and the settings of the
// features that depend on it.
func ReadFeatures(ctx context.Context, pool *pgxpool.Pool) (Features, error) {
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return Features{}, fmt.Errorf("read source features: %w", err)
	}
	defer conn.Release()
	pc := conn.Conn().PgConn()
	version, _, _ := strings.Cut(pc.ParameterStatus("server_version"), " ")
	f := Features{Version: version, Major: serverMajor(pc)}
	f.SlotOnStandby, f.OriginFilter = f.Major >= 16, f.Major >= 16
	f.FailoverSlots, f.InactiveSince = f.Major >= 17, f.Major >= 17
	f.GeneratedColumns, f.IdleSlotTimeoutSetting = f.Major >= 18, f.Major >= 18
	if !f.IdleSlotTimeoutSetting {
		return f, nil
	}
	var seconds int64
	err = conn.QueryRow(ctx, `SELECT current_setting('idle_replication_slot_timeout'),
       (SELECT setting::int8 * CASE unit WHEN 'min' THEN 60 ELSE 1 END FROM pg_settings WHERE name = 'idle_replication_slot_timeout')`).
		Scan(&f.IdleSlotTimeout, &seconds)
	if err != nil {
		return f, fmt.Errorf("read idle_replication_slot_timeout: %w", err)
	}
	f.IdleSlotTimeoutAfter = time.Duration(seconds) * time.Second
	return f, nil
}

// LogFeatures logs the source's features in one INFO line at start and,
// when usesSlot (replication mode) and the source invalidates idle slots,
// a WARN that cdc must not stay stopped longer than that. A source it
// cannot read is a WARN too: the features are for information only.
func LogFeatures(ctx context.Context, log *slog.Logger, pool *pgxpool.Pool, usesSlot bool) {
	f, err := ReadFeatures(ctx, pool)
	if err != nil {
		log.Warn("cannot read the source's features", "err", err)
		return
	}
	args := []any{"version", f.Version, "slot_on_standby", f.SlotOnStandby, "origin_filter", f.OriginFilter,
		"failover_slots", f.FailoverSlots, "inactive_since", f.InactiveSince,
		"generated_columns_in_publication", f.GeneratedColumns}
	if f.IdleSlotTimeoutSetting {
		args = append(args, "idle_replication_slot_timeout", f.IdleSlotTimeout)
	} else {
		args = append(args, "idle_replication_slot_timeout", false)
	}
	log.Info("source features", args...)
	if usesSlot && f.IdleSlotTimeoutAfter > 0 {
		log.Warn(fmt.Sprintf("the source invalidates a replication slot that no one has read for %s (idle_replication_slot_timeout): "+
			"cdc must not be stopped (or cut off from the source) longer than that, or its slot is lost and cdc copies the table again; "+
			"set idle_replication_slot_timeout = 0 on the source to keep it", f.IdleSlotTimeout),
			"idle_replication_slot_timeout", f.IdleSlotTimeout)
	}
}
