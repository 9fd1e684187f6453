package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"maps"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/myusta/cdc/internal/health"
)

// cmdStatus reads the running `cdc run` at HTTP_ADDR and prints its state
// for a person (--json: the /stats document as sent). It exits 0 when cdc
// is HEALTHY and 1 when it is not, or cannot be reached.
func cmdStatus(ctx context.Context, e *env, args []string) error {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print the /stats JSON as the daemon sent it")
	live := fs.Bool("live", false, "only check that the process answers /healthz (a container health check); print nothing")
	cfg, _, err := e.setup(fs, args)
	if err != nil {
		return err
	}
	base, err := health.BaseURL(cfg.HTTPAddr)
	if err != nil {
		return err
	}
	if cfg.WebConfigFile != "" {
		return usageError("cdc status reads the HTTP listener over plain HTTP without credentials, and WEB_CONFIG_FILE puts TLS or basic auth on it: ask it with your client instead, e.g. curl --cacert server.crt -u USER https://%s/stats (or /healthz)", cfg.HTTPAddr)
	}
	if *live {
		if err := health.Live(ctx, base); err != nil {
			return &exitError{code: exitFailure, err: fmt.Errorf("not alive: %w", err)}
		}
		return nil
	}
	st, raw, err := health.Fetch(ctx, base)
	if err != nil {
		return &exitError{code: exitFailure, err: fmt.Errorf("could not reach cdc at %s (HTTP_ADDR=%s): %w; `cdc run` must be running, with the same HTTP_ADDR", base, cfg.HTTPAddr, err)}
	}
	if *asJSON {
		_, err = e.stdout.Write(raw)
	} else {
		err = printStatus(e.stdout, base, st)
	}
	if err != nil {
		return fmt.Errorf("print status: %w", err)
	}
	if s := st.HealthStatus.Status; s != health.Healthy {
		return &exitError{code: exitFailure, err: fmt.Errorf("not healthy: %s", s)}
	}
	return nil
}

// printStatus renders st for a person.
func printStatus(w io.Writer, base string, st *health.Stats) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	ago := func(t *time.Time) string {
		if t == nil {
			return "never"
		}
		return st.Now.Sub(*t).Round(time.Second).String() + " ago"
	}
	ready := "not ready"
	if st.Ready {
		ready = "ready"
	}
	fmt.Fprintf(tw, "cdc at %s: %s\n", base, st.HealthStatus.Status)
	fmt.Fprintf(tw, "  mode\t%s, up %s, %s\n", st.Mode, (time.Duration(st.UptimeSeconds) * time.Second).String(), ready)
	if st.AppliedLSN != nil {
		fmt.Fprintf(tw, "  applied LSN\t%s\n", *st.AppliedLSN)
	}
	lag := fmt.Sprintf("%.1fs", st.LagSeconds)
	if st.LagBytes != nil && *st.LagBytes > 0 {
		lag += fmt.Sprintf(" (%d bytes received, not yet in chat)", *st.LagBytes)
	}
	fmt.Fprintf(tw, "  lag\t%s\n", lag)
	fmt.Fprintf(tw, "  synced\t%d rows; last sync %s (%d ms)\n", st.TotalSynced, ago(st.LastSyncTime), st.LastSyncDuration)
	fmt.Fprintf(tw, "  errors\t%d (%d consecutive failures)\n", st.Errors, st.ConsecutiveFailures)
	r := st.Reconcile
	fmt.Fprintf(tw, "  reconcile\t%d runs, %d repairs, %d failed; last %s (%d ms)\n", r.Runs, r.Repairs, r.Failures, ago(r.LastRun), r.LastRunMs)
	unresolved := "unknown"
	if u := st.DeadLetters.Unresolved; u != nil {
		unresolved = fmt.Sprint(*u)
	}
	fmt.Fprintf(tw, "  dead letters\t%s unresolved, %d since start\n", unresolved, st.DeadLetters.SinceStart)
	fmt.Fprintln(tw, "checks")
	for _, name := range slices.Sorted(maps.Keys(st.HealthStatus.Checks)) {
		c := st.HealthStatus.Checks[name]
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", c.Status, name, c.Message)
	}
	fmt.Fprintln(tw, "recommendations")
	for _, rec := range st.HealthStatus.Recommendations {
		fmt.Fprintf(tw, "  %s\n", rec)
	}
	return tw.Flush()
}
