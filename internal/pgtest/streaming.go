package pgtest

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/myusta/cdc/internal/pglocal"
)

// StreamLarge makes the source's walsender stream every transaction larger
// than 64 kB of decoded changes (logical_decoding_work_mem at its minimum,
// for the pair's source database) while it runs. Call it before the
// replication connection opens.
func (p *Pair) StreamLarge(t testing.TB) {
	t.Helper()
	Exec(t, p.Source, "ALTER DATABASE "+pgx.Identifier{"src_" + p.Name}.Sanitize()+" SET logical_decoding_work_mem = '64kB'")
}

// SlotStats are the source's decoding statistics of the pair's slot.
type SlotStats struct{ SpillTxns, SpillBytes, StreamTxns int64 }

// ReadSlotStats reads pg_stat_replication_slots for the pair's slot.
func (p *Pair) ReadSlotStats(t testing.TB) SlotStats {
	t.Helper()
	var s SlotStats
	err := p.Source.QueryRow(context.Background(), `SELECT spill_txns, spill_bytes, stream_txns
FROM pg_stat_replication_slots WHERE slot_name = $1`, p.Slot).Scan(&s.SpillTxns, &s.SpillBytes, &s.StreamTxns)
	if err != nil {
		t.Fatalf("slot statistics: %v", err)
	}
	return s
}

// WaitStreamed waits until the slot has streamed more than n transactions.
func (p *Pair) WaitStreamed(t testing.TB, n int64) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); p.ReadSlotStats(t).StreamTxns <= n; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the source streamed no transaction past %d: %+v", n, p.ReadSlotStats(t))
		}
	}
}

// MoveRestartLSN moves the slot's restart_lsn past everything written so
// far (pglocal.MoveRestartLSN); the stream must be running.
func (p *Pair) MoveRestartLSN(t testing.TB) {
	t.Helper()
	if err := pglocal.MoveRestartLSN(context.Background(), p.Source, p.Slot, 30*time.Second); err != nil {
		t.Fatal(err)
	}
}
