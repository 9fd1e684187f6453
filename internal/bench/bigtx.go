package bench

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/myusta/cdc/internal/pglocal"
)

// CatchUp is one consumer catching up, alone, on one large source
// transaction written while it was stopped: start to the marker committed
// after it being visible in chat, and what the source's walsender did with
// the transaction for that consumer's slot.
type CatchUp struct {
	Took                    time.Duration
	SpillBytes, StreamBytes int64
	// Apply and Walsender are the CPU time the applying processes (cdc's
	// chat backends, native's apply worker) and the walsender used from
	// their start to the end of the catch-up: a consumer applying through
	// one process cannot catch up faster than that process applies.
	Apply, Walsender time.Duration
}

// cpuSince is the CPU time groups of processes started for a catch-up
// have used so far (utime + stime since each started).
func cpuSince(groups []procGroup) (apply, walsender time.Duration) {
	for _, g := range groups {
		d := time.Duration(groupTicks(g.pids)) * time.Second / clockTicks
		switch g.name {
		case "walsender":
			walsender += d
		case "chat backends", "apply worker":
			apply += d
		}
	}
	return apply, walsender
}

// bigTxPhase times catching up on one transaction of o.BigTxRows row
// updates: cdc (which asks the source to stream it), native as a PG15
// subscription is by default (the walsender decodes the whole transaction,
// spilling it to disk past logical_decoding_work_mem, before it sends the
// first row), and native with streaming = on. Each catches up alone; each
// transaction is caught up on by cdc and one native setting, so cdc is
// measured twice a round. Every slot's restart_lsn is moved past the
// transaction before the next, so no run re-decodes an earlier one. It
// returns with cdc stopped and native enabled, streaming off.
func (b *run) bigTxPhase(ctx context.Context) error {
	r := b.r
	for rep := 0; rep < b.o.Reps; rep++ {
		for _, streaming := range []bool{false, true} {
			if err := b.nat.enable(ctx, false); err != nil {
				return err
			}
			if err := b.nat.streaming(ctx, streaming); err != nil {
				return err
			}
			kind := 0 // the marker's last digit: 0 native default, 1 native streaming
			if streaming {
				kind = 1
			}
			marker := fmt.Sprintf("00000000-0000-0000-0000-0000000b%03d%d", rep, kind)
			took, err := writeBigTx(ctx, b, marker)
			if err != nil {
				return err
			}
			r.BigTxWrite = append(r.BigTxWrite, took)
			// Who reads a fresh transaction first alternates.
			var cdc, nat CatchUp
			if !streaming {
				if cdc, err = b.catchUpCDC(ctx, marker); err == nil {
					nat, err = b.catchUpNative(ctx, marker)
				}
			} else if nat, err = b.catchUpNative(ctx, marker); err == nil {
				cdc, err = b.catchUpCDC(ctx, marker)
			}
			if err != nil {
				return err
			}
			r.BigTxCDC = append(r.BigTxCDC, cdc)
			if streaming {
				r.BigTxNatStream = append(r.BigTxNatStream, nat)
			} else {
				r.BigTxNat = append(r.BigTxNat, nat)
			}
			b.step("big transaction %d/%d (%d rows, written in %s): cdc %s (spilled %s, streamed %s), native streaming=%t %s (spilled %s, streamed %s)",
				rep+1, b.o.Reps, b.o.BigTxRows, took.Round(time.Millisecond), cdc.Took.Round(time.Millisecond), mb(cdc.SpillBytes), mb(cdc.StreamBytes),
				streaming, nat.Took.Round(time.Millisecond), mb(nat.SpillBytes), mb(nat.StreamBytes))
		}
	}
	if err := b.nat.streaming(ctx, false); err != nil {
		return err
	}
	return b.nat.enable(ctx, true)
}

// writeBigTx updates BigTxRows rows in one transaction, then inserts
// marker in the next, and returns how long the update took.
func writeBigTx(ctx context.Context, b *run, marker string) (time.Duration, error) {
	start := time.Now()
	_, err := b.s.source.Exec(ctx, `UPDATE users SET last_name = md5(random()::text), updated_at = clock_timestamp()
WHERE id IN (SELECT id FROM users LIMIT $1)`, b.o.BigTxRows)
	if err != nil {
		return 0, fmt.Errorf("big transaction: %w", err)
	}
	took := time.Since(start)
	return took, insertMarker(ctx, b.s.source, marker)
}

// catchUpCDC starts cdc, times it to marker, and stops it once its slot
// has moved past the transaction.
func (b *run) catchUpCDC(ctx context.Context, marker string) (CatchUp, error) {
	if err := resetSlotStats(ctx, b, slot); err != nil {
		return CatchUp{}, err
	}
	var err error
	if b.proc, err = startCDC(b.o.CDC, b.env, b.o.Log); err != nil {
		return CatchUp{}, err
	}
	if err := waitMarker(ctx, b.s.cdc, marker); err != nil {
		return CatchUp{}, err
	}
	c := CatchUp{Took: time.Since(b.proc.started)}
	groups, err := cdcProcesses(ctx, b.s, b.proc)
	if err != nil {
		return c, err
	}
	c.Apply, c.Walsender = cpuSince(groups)
	b.r.RSSBigTx = max(b.r.RSSBigTx, b.proc.peak())
	if err := b.finishCatchUp(ctx, slot, &c); err != nil {
		return c, err
	}
	return c, b.stopCDC()
}

// catchUpNative enables the subscription, times it to marker, and
// disables it once its slot has moved past the transaction.
func (b *run) catchUpNative(ctx context.Context, marker string) (CatchUp, error) {
	if err := resetSlotStats(ctx, b, subName); err != nil {
		return CatchUp{}, err
	}
	start := time.Now()
	if err := b.nat.enable(ctx, true); err != nil {
		return CatchUp{}, err
	}
	if err := waitMarker(ctx, b.s.native, marker); err != nil {
		return CatchUp{}, err
	}
	c := CatchUp{Took: time.Since(start)}
	groups, err := nativeProcesses(ctx, b.s)
	if err != nil {
		return c, err
	}
	c.Apply, c.Walsender = cpuSince(groups)
	if err := b.finishCatchUp(ctx, subName, &c); err != nil {
		return c, err
	}
	return c, b.nat.enable(ctx, false)
}

func resetSlotStats(ctx context.Context, b *run, slotName string) error {
	if _, err := b.s.source.Exec(ctx, "SELECT pg_stat_reset_replication_slot($1)", slotName); err != nil {
		return fmt.Errorf("reset the statistics of slot %s: %w", slotName, err)
	}
	return nil
}

// finishCatchUp reads the slot's spill and stream statistics, then, with
// the consumer still running, moves the slot's restart_lsn past what was
// written so far: checkpoints log the running transactions the walsender
// needs to move it, the consumer's confirmations let it.
func (b *run) finishCatchUp(ctx context.Context, slotName string, c *CatchUp) error {
	src := b.s.source
	if err := src.QueryRow(ctx, "SELECT spill_bytes, stream_bytes FROM pg_stat_replication_slots WHERE slot_name = $1", slotName).Scan(&c.SpillBytes, &c.StreamBytes); err != nil {
		return fmt.Errorf("statistics of slot %s: %w", slotName, err)
	}
	return pglocal.MoveRestartLSN(ctx, src, slotName, 2*time.Minute)
}

// streaming sets the subscription's streaming option.
func (n *native) streaming(ctx context.Context, on bool) error {
	_, err := n.chat.Exec(ctx, fmt.Sprintf("ALTER SUBSCRIPTION %s SET (streaming = %t)", pgx.Identifier{n.name}.Sanitize(), on))
	if err != nil {
		return fmt.Errorf("set subscription streaming: %w", err)
	}
	return nil
}

// writeBigTx reports the big-transaction phase.
func (r *Result) writeBigTx(w io.Writer) {
	if len(r.BigTxCDC) == 0 {
		return
	}
	med := func(cs []CatchUp) CatchUp {
		s := slices.Clone(cs)
		slices.SortFunc(s, func(a, b CatchUp) int { return cmp.Compare(a.Took, b.Took) })
		return s[len(s)/2]
	}
	cdc, nat, nst := med(r.BigTxCDC), med(r.BigTxNat), med(r.BigTxNatStream)
	fmt.Fprintf(w, "\none transaction updating %d rows, written while the consumer was stopped (written in %s, median), each consumer alone (median of %d / %d / %d runs):\n\n",
		r.BigTxRows, secs(median(r.BigTxWrite)), len(r.BigTxCDC), len(r.BigTxNat), len(r.BigTxNatStream))
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', tabwriter.Debug)
	fmt.Fprintln(tw, "| consumer\t catch-up\t CPU: applying process (cdc's chat backends, native's apply worker) / walsender\t walsender spilled\t streamed\t ratio\t target\t")
	fmt.Fprintln(tw, "|---\t---\t---\t---\t---\t---\t---\t")
	cpu := func(c CatchUp) string { return secs(c.Apply) + " / " + secs(c.Walsender) }
	fmt.Fprintf(tw, "| cdc (protocol 2, streaming on)\t %s\t %s\t %s\t %s\t –\t spill 0: %s; peak RSS %s ≤ %s: %s\t\n", secs(cdc.Took), cpu(cdc), mb(cdc.SpillBytes), mb(cdc.StreamBytes),
		verdict(cdc.SpillBytes == 0), mb(r.RSSBigTx), mb(Targets.RSS), verdict(r.RSSBigTx <= Targets.RSS))
	speedup := verdict(nat.Took.Seconds() >= Targets.BigTxSpeedup*cdc.Took.Seconds())
	if bound := nat.Took.Seconds() / cdc.Apply.Seconds(); bound < Targets.BigTxSpeedup && speedup != verdict(true) {
		// cdc overlaps its chat apply with the walsender's decoding; it
		// cannot catch up faster than its chat backend applies the rows.
		speedup = fmt.Sprintf("out of reach (native / cdc's chat apply time %.2f)", bound)
	}
	fmt.Fprintf(tw, "| native, PG15 default (streaming off)\t %s\t %s\t %s\t %s\t native/cdc %.2f\t ≥ %.1f×: %s\t\n", secs(nat.Took), cpu(nat), mb(nat.SpillBytes), mb(nat.StreamBytes),
		nat.Took.Seconds()/cdc.Took.Seconds(), Targets.BigTxSpeedup, speedup)
	fmt.Fprintf(tw, "| native, streaming = on\t %s\t %s\t %s\t %s\t native/cdc %.2f\t –\t\n", secs(nst.Took), cpu(nst), mb(nst.SpillBytes), mb(nst.StreamBytes), nst.Took.Seconds()/cdc.Took.Seconds())
	tw.Flush()
	fmt.Fprintf(w, "\nall runs: cdc %v, native %v, native streaming %v\n", catchUps(r.BigTxCDC), catchUps(r.BigTxNat), catchUps(r.BigTxNatStream))
}

func catchUps(cs []CatchUp) []string {
	var ds []time.Duration
	for _, c := range cs {
		ds = append(ds, c.Took)
	}
	return round(ds)
}
