package bench

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"text/tabwriter"
	"time"
)

// Targets are the product's goals the report checks.
var Targets = struct {
	BacklogSpeedup float64 // native time / cdc time, at least
	CopyVsPipe     float64 // cdc copy / COPY pipe, at most
	P99            float64 // ms at the steady rate, at most
	RSS            int64   // bytes, at most
	NotifyP99      float64 // ms at the steady rate in notify mode, at most
	BigTxSpeedup   float64 // native (default) time / cdc time on one large transaction, at least
}{2, 1.1, 50, 64 << 20, 100, 1.3}

func secs(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }
func mb(b int64) string           { return fmt.Sprintf("%.1f MB", float64(b)/(1<<20)) }

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "MISSED"
}

// Machine describes where the run happened.
func (r *Result) Machine() string {
	mem := "?"
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		if f := strings.Fields(string(b)); len(f) > 1 {
			var kb int64
			fmt.Sscan(f[1], &kb)
			mem = fmt.Sprintf("%.0f GiB", float64(kb)/(1<<20))
		}
	}
	durability := "durable (fsync on)"
	if r.Fast {
		durability = "fsync off"
	}
	return fmt.Sprintf("%d cores, %s RAM, PostgreSQL %s, %s, %s", runtime.NumCPU(), mem, r.PGVersion, durability, runtime.Version())
}

// Write prints the result as one table, in Markdown.
func (r *Result) Write(w io.Writer) {
	if r.Only == OnlyRegions {
		fmt.Fprintf(w, "the cross-region phase alone · %s\n", r.Machine())
		r.writeRegions(w)
		return
	}
	cp, cc, cn := median(r.CopyPipe), median(r.CopyCDC), median(r.CopyNative)
	bf, bc, bn := median(r.BacklogCeiling), median(r.BacklogCDC), median(r.BacklogNat)
	rate := func(d time.Duration) string {
		return fmt.Sprintf("%.0f rows/s", float64(r.BacklogChanges)/d.Seconds())
	}
	ms := func(p [3]float64) string { return fmt.Sprintf("%.1f / %.1f / %.1f ms", p[0], p[1], p[2]) }
	peak := max(r.RSSCopy, r.RSSBacklog, r.RSSSteady, r.RSSNotify)
	in := r.SteadyCDC.Inside

	shape := "reference table (11 columns)"
	if r.Shape == ShapeWide {
		shape = "wide table (20 columns: text[], ~1 kB jsonb, an enum, …)"
	}
	fmt.Fprintf(w, "%d rows, %s, cdc's wire format %s (WIRE_FORMAT=%s) · %s · medians of %d runs where marked\n\n", r.Rows, shape, r.Format, r.Wire, r.Machine(), r.Reps)
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', tabwriter.Debug)
	fmt.Fprintln(tw, "| phase\t cdc\t native\t COPY pipe\t ratio\t target\t")
	fmt.Fprintln(tw, "|---\t---\t---\t---\t---\t---\t")
	fmt.Fprintf(tw, "| initial copy (median)\t %s\t %s\t %s\t cdc/pipe %.2f, native/cdc %.2f\t cdc ≤ %.1f× pipe: %s\t\n",
		secs(cc), secs(cn), secs(cp), cc.Seconds()/cp.Seconds(), cn.Seconds()/cc.Seconds(), Targets.CopyVsPipe, verdict(cc.Seconds() <= Targets.CopyVsPipe*cp.Seconds()))
	fmt.Fprintf(tw, "| backlog catch-up, %d changes (median)\t %s (%s)\t %s (%s)\t –\t native/cdc %.2f\t ≥ %.0f×: %s\t\n",
		r.BacklogChanges, secs(bc), rate(bc), secs(bn), rate(bn), bn.Seconds()/bc.Seconds(), Targets.BacklogSpeedup, verdict(bn.Seconds() >= Targets.BacklogSpeedup*bc.Seconds()))
	fmt.Fprintf(tw, "| backlog: the source's walsender alone (floor)\t %s (%s)\t –\t –\t cdc/floor %.2f, native/floor %.2f\t –\t\n",
		secs(bf), rate(bf), bc.Seconds()/bf.Seconds(), bn.Seconds()/bf.Seconds())
	fmt.Fprintf(tw, "| steady %d tps × %s, each alone: p50 / p95 / p99 (window with the median p99)\t %s\t %s\t –\t p99 native/cdc %.2f\t p99 ≤ %.0f ms: %s\t\n",
		r.SteadyTPS, r.SteadyFor, ms(r.SteadyCDC.Latency), ms(r.SteadyNat.Latency), r.SteadyNat.Latency[2]/r.SteadyCDC.Latency[2], Targets.P99, verdict(r.SteadyCDC.Latency[2] <= Targets.P99))
	fmt.Fprintf(tw, "| steady: the source's walsender alone (floor)\t %s\t –\t –\t –\t –\t\n", ms(r.SteadyFloor))
	fmt.Fprintf(tw, "| steady: source statement + commit, during each window\t %s\t %s\t –\t –\t –\t\n", ms(r.SteadyCDC.Commit), ms(r.SteadyNat.Commit))
	fmt.Fprintf(tw, "| steady: CPU during the window, %% of one core\t %s\t %s\t –\t –\t –\t\n", r.SteadyCDC.CPU, r.SteadyNat.CPU)
	fmt.Fprintf(tw, "| steady, inside cdc: receive delay (of which before the walsender sent it) / batch age / apply p99\t %.0f (%.0f) / %.0f / %.0f ms\t –\t –\t –\t –\t\n", in.Receive[2], in.Send[2], in.Age[2], in.Apply[2])
	fmt.Fprintf(tw, "| steady, inside cdc: scheduled reconcile runs during the window\t %s\t –\t –\t –\t –\t\n", in.Reconcile)
	if r.Core {
		fmt.Fprintf(tw, "| cdc peak RSS: copy / backlog / steady\t %s / %s / %s\t –\t –\t –\t ≤ %s: %s\t\n",
			mb(r.RSSCopy), mb(r.RSSBacklog), mb(r.RSSSteady), mb(Targets.RSS), verdict(peak <= Targets.RSS))
		tw.Flush()
		r.writeSweep(w)
		r.writeBigTx(w)
		r.writeRuns(w)
		r.writeRegions(w)
		return
	}
	fmt.Fprintf(tw, "| steady %d tps × %s, cdc in notify mode: p50 / p95 / p99\t %s\t –\t –\t p99 notify/replication %.2f\t p99 ≤ %.0f ms: %s\t\n",
		r.SteadyTPS, r.SteadyFor, ms(r.SteadyNotify.Latency), r.SteadyNotify.Latency[2]/r.SteadyCDC.Latency[2], Targets.NotifyP99, verdict(r.SteadyNotify.Latency[2] <= Targets.NotifyP99))
	fmt.Fprintf(tw, "| notify mode: transactions/s made of %d asked; source statement + commit p50 / p95 / p99\t %.0f tps; %s\t –\t –\t –\t –\t\n",
		r.SteadyTPS, float64(r.SteadyNotify.Done)/r.SteadyFor.Seconds(), ms(r.SteadyNotify.Commit))
	fmt.Fprintf(tw, "| notify trigger alone, nobody listening (the source's own limit): made; commit p50 / p95 / p99\t %.0f tps; %s\t –\t –\t –\t –\t\n",
		r.NotifySourceTPS, ms(r.NotifySourceCommit))
	fmt.Fprintf(tw, "| highest single-row rate kept up with (ramp, %s steps, p99 ≤ %.0f ms): replication mode\t %s\t –\t –\t –\t –\t\n", r.RampStep, keepUpP99, rampSummary(r.RampCDC))
	fmt.Fprintf(tw, "| highest single-row rate kept up with: notify mode\t %s\t –\t –\t –\t –\t\n", rampSummary(r.RampNotify))
	fmt.Fprintf(tw, "| cdc verify --full, %d equal rows (median; heap source / chat %s / %s)\t %s\t –\t –\t –\t ≤ 5 s: %s\t\n",
		r.Rows, mb(r.VerifyHeap[0]), mb(r.VerifyHeap[1]), secs(median(r.VerifyFull)), verdict(median(r.VerifyFull) <= 5*time.Second))
	fmt.Fprintf(tw, "| one windowed reconcile run, 3-min window, %d rows changed, %d compared (median)\t %s\t –\t –\t –\t ≤ 2 s: %s\t\n",
		r.WindowChanged, r.WindowChecked, secs(median(r.Window)), verdict(median(r.Window) <= 2*time.Second))
	cf, cs := median(r.ConflictFree), median(r.ConflictSwap)
	fmt.Fprintf(tw, "| a %d-row transaction, chat has a unique index on email: plain / with an email swap in it (applied again in source order) (median)\t %s / %s (+%s)\t –\t –\t swap/plain %.2f\t –\t\n",
		conflictRows, secs(cf), secs(cs), secs(cs-cf), cs.Seconds()/max(cf.Seconds(), 1e-9))
	fmt.Fprintf(tw, "| cdc peak RSS: copy / backlog / steady / notify mode\t %s / %s / %s / %s\t –\t –\t –\t ≤ %s: %s\t\n",
		mb(r.RSSCopy), mb(r.RSSBacklog), mb(r.RSSSteady), mb(r.RSSNotify), mb(Targets.RSS), verdict(peak <= Targets.RSS))
	tw.Flush()
	r.writeSweep(w)
	r.writeBigTx(w)
	r.writeRuns(w)
	r.writeRegions(w)
}

// writeRuns lists every run's figures.
func (r *Result) writeRuns(w io.Writer) {
	fmt.Fprintf(w, "\nall runs: copy pipe %v, cdc %v (of which startup and slot creation %v), native %v; backlog floor %v, cdc %v, native %v; steady p99 floor %s, cdc %s, native %s; transactions made (median window) %d (cdc) / %d (native), latency samples %d / %d\n",
		round(r.CopyPipe), round(r.CopyCDC), round(r.CopyCDCStartup), round(r.CopyNative), round(r.BacklogCeiling), round(r.BacklogCDC), round(r.BacklogNat),
		p99s(r.SteadyFloorRuns), p99s(latencies(r.SteadyCDCRuns)), p99s(latencies(r.SteadyNatRuns)),
		r.SteadyCDC.Done, r.SteadyNat.Done, r.SteadyCDC.Samples, r.SteadyNat.Samples)
}

// rampSummary says how far a ramp went: the highest rate kept up with,
// and what stopped it.
func rampSummary(steps []RampStep) string {
	if len(steps) == 0 {
		return "not measured"
	}
	rate, loadLimited := maxKept(steps)
	last := steps[len(steps)-1]
	switch {
	case last.Kept:
		return fmt.Sprintf("≥ %.0f tps (every rate tried kept up)", rate)
	case loadLimited && rate == 0:
		return fmt.Sprintf("the source could not make the first rate: %.0f of %d tps (p99 there %.0f ms)", last.Achieved, last.Target, last.P99)
	case loadLimited:
		return fmt.Sprintf("≥ %.0f tps (the source and its clients made only %.0f of %d tps; p99 there %.0f ms)", rate, last.Achieved, last.Target, last.P99)
	default:
		return fmt.Sprintf("%.0f tps (behind at %d tps: p99 %.0f ms)", rate, last.Target, last.P99)
	}
}

func round(d []time.Duration) []string {
	out := make([]string, len(d))
	for i, x := range d {
		out[i] = x.Round(10 * time.Millisecond).String()
	}
	return out
}

// p99s lists the p99 of each window, in ms.
func p99s(ps [][3]float64) string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = fmt.Sprintf("%.1f", p[2])
	}
	return "[" + strings.Join(out, " ") + "] ms"
}
