package bench

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"maps"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/Shopify/toxiproxy/v2"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/myusta/cdc/internal/pglocal"
)

// OnlyRegions is the Options.Only value that runs the cross-region phase
// alone.
const OnlyRegions = "regions"

// The cross-region phase's defaults, for Options left zero.
const (
	defaultRegionRTT  = 40 * time.Millisecond
	defaultRegionRows = 100_000
	defaultRegionTPS  = 200
	defaultRegionFor  = 15 * time.Second
)

// CrossRegion is what the cross-region phase (regionsPhase) measured: the
// source and chat in two regions RTT apart, cdc placed in either, native's
// subscription (which lives in chat's server) across the link in both.
type CrossRegion struct {
	RTT  time.Duration // round trip between the regions
	Rows int           // users rows
	TPS  int           // the steady windows' rate, single-row transactions/s
	For  time.Duration // the steady windows' length
	// cdc's restarts (existing slot and checkpoint) with no proxy in
	// between: the process's own start-up, which the link's round trips
	// add to.
	RestartDirect []time.Duration
	Placements    []Placement
}

// Placement is one placement of cdc, with native measured beside it in
// the same stretch of the run.
type Placement struct {
	Name                                 string
	CopyCDC, CopyNative                  []time.Duration
	CopyStartup                          []time.Duration // of cdc's copy: process start to the copy's start (preflight, slot creation)
	BacklogChanges                       int
	BacklogFloor, BacklogCDC, BacklogNat []time.Duration // the floor: a bare slot reader across the link
	SteadyCDC, SteadyNat                 Steady
	Restart                              []time.Duration // cdc's start to "streaming changes", existing slot and checkpoint
}

// link is the network between the two regions: a Toxiproxy proxy in front
// of each server, adding half the round trip each way.
type link struct {
	src, chat *toxiproxy.Proxy
}

// startLink starts the proxies in front of s's servers.
func startLink(s *servers, rtt time.Duration) (*link, error) {
	tp := toxiproxy.NewServer(toxiproxy.NewMetricsContainer(prometheus.NewRegistry()), zerolog.Nop())
	l := &link{}
	for _, x := range []struct {
		px   **toxiproxy.Proxy
		name string
		srv  *pglocal.Server
	}{{&l.src, "source", s.src}, {&l.chat, "chat", s.chat}} {
		px := toxiproxy.NewProxy(tp, x.name, "127.0.0.1:0", fmt.Sprintf("127.0.0.1:%d", x.srv.Port()))
		if err := px.Start(); err != nil {
			l.close()
			return nil, fmt.Errorf("start proxy %s: %w", x.name, err)
		}
		*x.px = px
		for _, stream := range []string{"upstream", "downstream"} {
			spec := fmt.Sprintf(`{"name": "latency_%s", "type": "latency", "stream": %q, "toxicity": 1, "attributes": {"latency": %d}}`,
				stream, stream, rtt.Milliseconds()/2)
			if _, err := px.Toxics.AddToxicJson(strings.NewReader(spec)); err != nil {
				l.close()
				return nil, fmt.Errorf("add latency to proxy %s: %w", x.name, err)
			}
		}
	}
	return l, nil
}

func (l *link) close() {
	for _, px := range []*toxiproxy.Proxy{l.src, l.chat} {
		if px != nil {
			px.Stop()
		}
	}
}

// via points dsn at the proxy px.
func via(dsn string, px *toxiproxy.Proxy) (string, error) {
	u, err := url.Parse(dsn)
	if err != nil {
		return "", fmt.Errorf("parse dsn: %w", err)
	}
	u.Host = px.Listen
	return u.String(), nil
}

// regionsPhase measures cdc and native with the source and chat in two
// regions, on servers of its own (o.RegionRows rows): first cdc beside
// chat (its source connections, replication and queries, across the
// link), then cdc beside the source (its chat connection across the
// link). Native's subscription connects to the source across the link in
// both, and is measured again beside each placement: the first copy, a
// backlog catch-up, a steady window at a modest rate, and cdc's restart to
// streaming. Both consumers must end equal to the source.
func regionsPhase(ctx context.Context, o Options, r *Result) error {
	ro := o
	ro.Rows = cmp.Or(o.RegionRows, defaultRegionRows)
	ro.Shape, ro.Wire = cmp.Or(o.Shape, ShapeReference), cmp.Or(o.Wire, "auto")
	ro.Reps = max(o.Reps, 1)
	x := &CrossRegion{RTT: cmp.Or(o.RegionRTT, defaultRegionRTT), Rows: ro.Rows,
		TPS: cmp.Or(o.RegionTPS, defaultRegionTPS), For: cmp.Or(o.RegionFor, defaultRegionFor)}
	ro.SteadyTPS, ro.SteadyFor = x.TPS, x.For
	scratch := &Result{Options: ro}
	s, err := setup(ctx, ro, scratch)
	if s != nil {
		defer s.close()
	}
	if err != nil {
		return err
	}
	if r.PGVersion == "" {
		r.PGVersion = scratch.PGVersion
	}
	l, err := startLink(s, x.RTT)
	if err != nil {
		return err
	}
	defer l.close()
	srcVia, err := via(s.sourceDSN, l.src)
	if err != nil {
		return err
	}
	chatVia, err := via(s.cdcDSN, l.chat)
	if err != nil {
		return err
	}
	ids, err := loadIDs(ctx, s.source)
	if err != nil {
		return err
	}
	nat := &native{chat: s.native, sourceDSN: srcVia, name: subName}
	direct := cdcEnv(s, ro)
	besideChat, besideSource := maps.Clone(direct), maps.Clone(direct)
	besideChat["SOURCE_DATABASE_URL"] = srcVia
	besideSource["CHAT_DATABASE_URL"] = chatVia
	r.Cross = x
	var b *run
	for i, pl := range []struct {
		name string
		env  map[string]string
	}{{"cdc beside chat", besideChat}, {"cdc beside the source", besideSource}} {
		b = &run{s: s, o: ro, r: &Result{Options: ro}, nat: nat, env: pl.env}
		b.step("regions (%s round trip): %s", x.RTT, pl.name)
		p, err := b.placement(ctx, ids, srcVia, pl.name)
		if err == nil && i == 0 {
			// The same restart with no proxy: the process's own start-up.
			b.env = direct
			x.RestartDirect, err = b.restarts(ctx)
			b.env = pl.env
		}
		if serr := b.stopCDC(); err == nil {
			err = serr
		}
		if err != nil {
			return fmt.Errorf("%s: %w", pl.name, err)
		}
		x.Placements = append(x.Placements, p)
	}
	// Both consumers catch up and must equal the source row by row.
	return b.converge(ctx)
}

// placement measures one placement of cdc (b.env) beside native: the first
// copy, restarts, a backlog catch-up (each consumer alone, with the floor),
// then one steady window each. It returns with cdc stopped and native
// enabled.
func (b *run) placement(ctx context.Context, ids []string, floorDSN, name string) (Placement, error) {
	s := b.s
	p := Placement{Name: name}
	// The last placement's markers would be copied into chat and found
	// there at once.
	if _, err := s.source.Exec(ctx, "DELETE FROM users WHERE first_name = 'marker'"); err != nil {
		return p, fmt.Errorf("delete markers: %w", err)
	}
	if err := b.copyPhase(ctx); err != nil {
		return p, fmt.Errorf("copy: %w", err)
	}
	var err error
	if p.Restart, err = b.restarts(ctx); err != nil {
		return p, err
	}
	floor := &ceiling{dsn: floorDSN, slot: "bench_ceiling"}
	if err := b.backlogPhase(ctx, floor, ids); err != nil {
		return p, fmt.Errorf("backlog: %w", err)
	}
	if p.SteadyCDC, p.SteadyNat, err = b.regionSteady(ctx, ids); err != nil {
		return p, fmt.Errorf("steady: %w", err)
	}
	r := b.r
	p.CopyCDC, p.CopyNative, p.CopyStartup = r.CopyCDC, r.CopyNative, r.CopyCDCStartup
	p.BacklogChanges, p.BacklogFloor, p.BacklogCDC, p.BacklogNat = r.BacklogChanges, r.BacklogCeiling, r.BacklogCDC, r.BacklogNat
	b.step("regions, %s: restart to streaming %v; steady p50/p99 cdc %.1f/%.1f ms, native %.1f/%.1f ms", name, round(p.Restart),
		p.SteadyCDC.Latency[0], p.SteadyCDC.Latency[2], p.SteadyNat.Latency[0], p.SteadyNat.Latency[2])
	return p, nil
}

// restarts times o.Reps restarts of cdc with an existing slot and
// checkpoint: process start to its "streaming changes" line. cdc is left
// stopped.
func (b *run) restarts(ctx context.Context) ([]time.Duration, error) {
	var out []time.Duration
	for rep := 0; rep < b.o.Reps; rep++ {
		if err := b.stopCDC(); err != nil {
			return out, err
		}
		var err error
		if b.proc, err = startCDC(b.o.CDC, b.env, b.o.Log); err != nil {
			return out, err
		}
		if _, err := b.proc.waitLog(ctx, "streaming changes"); err != nil {
			return out, fmt.Errorf("restart: %w", err)
		}
		out = append(out, time.Since(b.proc.started))
	}
	return out, b.stopCDC()
}

// regionSteady measures one steady window of cdc, then one of native, each
// alone, with the latency trigger installed for the windows only (the
// next placement's copy would fire it).
func (b *run) regionSteady(ctx context.Context, ids []string) (cdc, nat Steady, err error) {
	s := b.s
	for _, p := range []*pgxpool.Pool{s.cdc, s.native} {
		if _, err := p.Exec(ctx, latencyTrigger); err != nil {
			return cdc, nat, fmt.Errorf("install latency trigger: %w", err)
		}
	}
	if err := b.nat.enable(ctx, false); err != nil {
		return cdc, nat, err
	}
	if b.proc, err = startCDC(b.o.CDC, b.env, b.o.Log); err != nil {
		return cdc, nat, err
	}
	cdc, err = cdcWindow(ctx, s, b.proc, ids, b.o)
	if serr := b.stopCDC(); err == nil {
		err = serr
	}
	if err != nil {
		return cdc, nat, fmt.Errorf("cdc: %w", err)
	}
	if err := b.nat.enable(ctx, true); err != nil {
		return cdc, nat, err
	}
	nat, err = steadyPhase(ctx, s, s.native, ids, b.o, "native", nil,
		func(ctx context.Context) ([]procGroup, error) { return nativeProcesses(ctx, s) })
	if err != nil {
		return cdc, nat, err
	}
	for _, p := range []*pgxpool.Pool{s.cdc, s.native} {
		if _, err := p.Exec(ctx, "DROP TRIGGER IF EXISTS bench_latency ON public.users"); err != nil {
			return cdc, nat, fmt.Errorf("drop latency trigger: %w", err)
		}
	}
	return cdc, nat, nil
}

// writeRegions prints the cross-region phase's table, if it ran.
func (r *Result) writeRegions(w io.Writer) {
	x := r.Cross
	if x == nil {
		return
	}
	fmt.Fprintf(w, "\nAcross regions: source and chat %s apart (Toxiproxy, %d ms each way), %d rows, medians of %d runs where marked; native's subscription is in chat's server, across the link, in both placements, measured again beside each\n\n",
		x.RTT, x.RTT.Milliseconds()/2, x.Rows, r.Reps)
	tw := tabwriter.NewWriter(w, 0, 0, 1, ' ', tabwriter.Debug)
	fmt.Fprintln(tw, "| placement\t metric\t cdc\t native\t cdc/native\t")
	fmt.Fprintln(tw, "|---\t---\t---\t---\t---\t")
	ratio := func(c, n float64) string {
		if n <= 0 {
			return "–"
		}
		return fmt.Sprintf("%.2f", c/n)
	}
	rtts := func(d time.Duration) float64 { return d.Seconds() / x.RTT.Seconds() }
	direct := median(x.RestartDirect)
	for _, p := range x.Placements {
		cc, cn := median(p.CopyCDC), median(p.CopyNative)
		bc, bn := median(p.BacklogCDC), median(p.BacklogNat)
		rs := median(p.Restart)
		fmt.Fprintf(tw, "| %s\t first copy, %d rows (median; cdc: of which start-up and slot creation)\t %s (%s)\t %s\t %s\t\n",
			p.Name, x.Rows, secs(cc), secs(median(p.CopyStartup)), secs(cn), ratio(cc.Seconds(), cn.Seconds()))
		fmt.Fprintf(tw, "| %s\t backlog catch-up, %d changes (median, from start / enable; cdc: less its restart time; a bare slot reader across the link: %s)\t %s (%s)\t %s\t %s\t\n",
			p.Name, p.BacklogChanges, secs(median(p.BacklogFloor)), secs(bc), secs(bc-rs), secs(bn), ratio(bc.Seconds(), bn.Seconds()))
		for i, q := range []string{"p50", "p99"} {
			k := []int{0, 2}[i]
			fmt.Fprintf(tw, "| %s\t steady %d tps × %s: latency %s\t %.1f ms\t %.1f ms\t %s\t\n",
				p.Name, x.TPS, x.For, q, p.SteadyCDC.Latency[k], p.SteadyNat.Latency[k], ratio(p.SteadyCDC.Latency[k], p.SteadyNat.Latency[k]))
		}
		fmt.Fprintf(tw, "| %s\t cdc restart to streaming, existing slot and checkpoint (median): round trips = (time − %s with no proxy) / RTT\t %s = %.0f round trips\t –\t –\t\n",
			p.Name, secs(direct), secs(rs), rtts(rs-direct))
	}
	tw.Flush()
	fmt.Fprintf(w, "\nall runs across regions: restart with no proxy %v", round(x.RestartDirect))
	for _, p := range x.Placements {
		fmt.Fprintf(w, "; %s: copy cdc %v (start-up %v), native %v; backlog floor %v, cdc %v, native %v; restart %v; steady samples %d (cdc) / %d (native)",
			p.Name, round(p.CopyCDC), round(p.CopyStartup), round(p.CopyNative), round(p.BacklogFloor), round(p.BacklogCDC), round(p.BacklogNat), round(p.Restart),
			p.SteadyCDC.Samples, p.SteadyNat.Samples)
	}
	fmt.Fprintln(w)
}
