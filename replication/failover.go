package replication

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/myusta/cdc/internal/schema"
)

// Promotion is what a promotion of one of the source's standbys would
// cost the slot, as the primary shows it. From PostgreSQL 17 a standby
// keeps a copy of a failover slot (sync_replication_slots on the
// standby), and synchronized_standby_slots on the primary holds logical
// changes back until the standbys it names have them, so chat never holds
// a change a promoted standby lacks. With both, cdc continues from the
// synced slot; otherwise it creates the slot again and copies the table,
// which compares every row and repairs chat.
type Promotion struct {
	Version      int    // server_version_num
	Failover     bool   // the slot is a failover slot
	StandbySlots string // synchronized_standby_slots ("" when unset)
	// Idle are the physical slots named in StandbySlots that no standby
	// streams through now: logical changes wait for them.
	Idle []string
	// OnStandby: the source cdc reads is itself a hot standby (16+), and
	// the slot is its own.
	OnStandby bool
}

// Keeps reports whether a promoted standby continues from the slot: the
// synced copy of a failover slot, or the slot of a standby source, which
// stays the promoted server's own.
func (p Promotion) Keeps() bool {
	return p.OnStandby || p.Version >= 170000 && p.Failover && p.StandbySlots != ""
}

// String says what a promotion costs and why.
func (p Promotion) String() string {
	const redo = "a promotion recreates the slot and copies the table (a full compare): "
	switch {
	case p.OnStandby:
		return "the slot is on the standby cdc reads: promoting that standby keeps the slot; a promotion of another standby recreates it and copies the table"
	case p.Version < 170000:
		return redo + "before PostgreSQL 17 a standby has no copy of a logical slot"
	case !p.Failover:
		return redo + "the slot is not a failover slot (cdc makes it one when it next creates or opens it)"
	case p.StandbySlots == "":
		return redo + "synchronized_standby_slots is not set on the source, so a standby's synced slot may be behind what chat holds; set it to the standbys' physical slots"
	}
	s := "a promotion continues from the synced slot (synchronized_standby_slots = " + p.StandbySlots + ")"
	if len(p.Idle) > 0 {
		s += "; no standby streams through " + strings.Join(p.Idle, ", ") + ", which holds cdc's changes back"
	}
	return s
}

// ReadPromotion reads the slot's failover flag and the primary's
// synchronized_standby_slots.
func ReadPromotion(ctx context.Context, q schema.Querier, slot string) (Promotion, error) {
	var p Promotion
	// to_jsonb reads the failover column where it exists (17+).
	err := q.QueryRow(ctx, `SELECT current_setting('server_version_num')::int, pg_is_in_recovery(),
       COALESCE((SELECT (to_jsonb(s) ->> 'failover')::bool FROM pg_replication_slots s WHERE slot_name = $1), false),
       COALESCE(current_setting('synchronized_standby_slots', true), ''),
       ARRAY(SELECT n FROM unnest(string_to_array(replace(COALESCE(current_setting('synchronized_standby_slots', true), ''), ' ', ''), ',')) n
             WHERE n <> '' AND NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = n AND active))`, slot).
		Scan(&p.Version, &p.OnStandby, &p.Failover, &p.StandbySlots, &p.Idle)
	if err != nil {
		return p, fmt.Errorf("read the slot's failover setup: %w", err)
	}
	return p, nil
}

// serverMajor is the major version a connection's server reports.
func serverMajor(conn *pgconn.PgConn) int {
	v, _, _ := strings.Cut(conn.ParameterStatus("server_version"), ".")
	n, _ := strconv.Atoi(strings.TrimFunc(v, func(r rune) bool { return r < '0' || r > '9' }))
	return n
}

// createSlot creates the slot with an exported snapshot, as a failover
// slot where the source supports it (17+, not on a standby).
func createSlot(ctx context.Context, conn *pgconn.PgConn, slot string, onStandby bool) (pglogrepl.CreateReplicationSlotResult, error) {
	if serverMajor(conn) < 17 || onStandby {
		return pglogrepl.CreateReplicationSlot(ctx, conn, slot, "pgoutput",
			pglogrepl.CreateReplicationSlotOptions{Mode: pglogrepl.LogicalReplication, SnapshotAction: "EXPORT_SNAPSHOT"})
	}
	return pglogrepl.ParseCreateReplicationSlot(conn.Exec(ctx, "CREATE_REPLICATION_SLOT "+pgx.Identifier{slot}.Sanitize()+" LOGICAL pgoutput (SNAPSHOT 'export', FAILOVER true)"))
}

// makeFailover turns an existing slot into a failover slot (17+), as
// cdc creates them there; a slot created before an upgrade to 17 is not.
func makeFailover(ctx context.Context, conn *pgconn.PgConn, slot string) error {
	_, err := conn.Exec(ctx, "ALTER_REPLICATION_SLOT "+pgx.Identifier{slot}.Sanitize()+" (FAILOVER true)").ReadAll()
	if err != nil {
		return fmt.Errorf("make slot %s a failover slot: %w", slot, err)
	}
	return nil
}
