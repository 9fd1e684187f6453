// Command cdc-bench measures cdc against PostgreSQL's native logical
// replication on this machine, in one run, and prints one table. It starts
// its own throw-away PostgreSQL servers; see BENCHMARKS.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/myusta/cdc/internal/bench"
)

func main() {
	if addrs := os.Getenv(bench.RelayEnv); addrs != "" {
		// The relay of the sweep's CPU floor, started by a running bench.
		if err := bench.RunRelay(addrs); err != nil {
			fmt.Fprintln(os.Stderr, "cdc-bench:", err)
			os.Exit(1)
		}
		return
	}
	if spec := os.Getenv(bench.ApplyEnv); spec != "" {
		// The consumer of the sweep's latency floor, started by a running bench.
		if err := bench.RunApply(spec); err != nil {
			fmt.Fprintln(os.Stderr, "cdc-bench:", err)
			os.Exit(1)
		}
		return
	}
	o := bench.Options{Log: os.Stderr}
	flag.IntVar(&o.Rows, "rows", 1_000_000, "rows in the users table")
	flag.IntVar(&o.Reps, "reps", 3, "repetitions of the copy, backlog and steady phases (medians are reported)")
	flag.IntVar(&o.SteadyTPS, "tps", 2000, "single-row transactions per second in the steady phase")
	flag.DurationVar(&o.SteadyFor, "steady", 30*time.Second, "length of the steady phase")
	flag.IntVar(&o.BacklogClients, "clients", 4, "concurrent clients writing the backlog's single-row updates")
	flag.DurationVar(&o.RampStep, "ramp-step", 10*time.Second, "length of each step of the keep-up ramp")
	rates := flag.String("ramp", "2000,3000,4000,6000,8000", "rates (transactions/s) of the keep-up ramp")
	flag.StringVar(&o.CDC, "cdc", "", "cdc binary (default: build ./cmd/cdc)")
	flag.BoolVar(&o.Fast, "fast", false, "run both servers with fsync off")
	flag.StringVar(&o.Shape, "shape", bench.ShapeReference, "the users table: reference (11 columns) or wide (20: text[], ~1 kB jsonb, an enum, …)")
	flag.StringVar(&o.Wire, "wire", "auto", "cdc's WIRE_FORMAT: auto, binary or text")
	flag.BoolVar(&o.Core, "core", false, "only the copy, backlog and steady phases (and the sweep, if asked for)")
	sweep := flag.String("sweep", "10,100,500,2000", "rates (transactions/s) of the latency sweep, cdc against native at each; empty: no sweep")
	flag.DurationVar(&o.SweepFor, "sweep-for", 20*time.Second, "length of each sweep window")
	flag.IntVar(&o.SweepRounds, "sweep-rounds", 2, "rounds through the sweep's rates")
	flag.IntVar(&o.BigTxRows, "big-tx", 1_000_000, "rows one source transaction updates for the large-transaction catch-up (at most --rows); 0: skip it")
	flag.BoolVar(&o.Regions, "regions", true, "run the cross-region phase after the others (default off with --core)")
	flag.DurationVar(&o.RegionRTT, "region-rtt", 40*time.Millisecond, "cross-region phase: round trip between the source's region and chat's (half of it each way)")
	flag.IntVar(&o.RegionRows, "region-rows", 100_000, "cross-region phase: rows in its users table (it runs on servers of its own)")
	flag.IntVar(&o.RegionTPS, "region-tps", 200, "cross-region phase: single-row transactions per second in its steady windows")
	flag.DurationVar(&o.RegionFor, "region-for", 15*time.Second, "cross-region phase: length of its steady windows")
	flag.StringVar(&o.Only, "only", "", "run only this phase: regions")
	out := flag.String("out", "", "also write the table to this file")
	flag.Parse()
	explicit := map[string]bool{}
	flag.Visit(func(f *flag.Flag) { explicit[f.Name] = true })
	if o.Core && !explicit["regions"] {
		o.Regions = false
	}
	o.RampRates = parseRates("--ramp", *rates)
	if *sweep != "" {
		o.SweepRates = parseRates("--sweep", *sweep)
	}
	for _, c := range []struct {
		name string
		ok   bool
		want string
	}{
		{"--rows", o.Rows >= 1000, "at least 1000"},
		{"--reps", o.Reps >= 1, "at least 1"},
		{"--tps", o.SteadyTPS >= 1, "at least 1"},
		{"--steady", o.SteadyFor >= time.Second, "at least 1s"},
		{"--clients", o.BacklogClients >= 1, "at least 1"},
		{"--ramp-step", o.RampStep >= time.Second, "at least 1s"},
		{"--sweep-for", o.SweepFor >= time.Second, "at least 1s"},
		{"--sweep-rounds", o.SweepRounds >= 1, "at least 1"},
		{"--big-tx", o.BigTxRows >= 0, "0 or more"},
		{"--shape", o.Shape == bench.ShapeReference || o.Shape == bench.ShapeWide, "reference or wide"},
		{"--wire", o.Wire == "auto" || o.Wire == "binary" || o.Wire == "text", "auto, binary or text"},
		{"--region-rtt", o.RegionRTT >= 2*time.Millisecond, "at least 2ms"},
		{"--region-rows", o.RegionRows >= 1000, "at least 1000"},
		{"--region-tps", o.RegionTPS >= 1, "at least 1"},
		{"--region-for", o.RegionFor >= time.Second, "at least 1s"},
		{"--only", o.Only == "" || o.Only == bench.OnlyRegions, "empty or regions"},
	} {
		if !c.ok {
			fmt.Fprintf(os.Stderr, "cdc-bench: %s must be %s\n", c.name, c.want)
			os.Exit(2)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o, *out); err != nil {
		fmt.Fprintln(os.Stderr, "cdc-bench:", err)
		os.Exit(1)
	}
}

// parseRates reads a comma-separated list of positive rates; a bad one
// ends the command (exit 2).
func parseRates(flagName, list string) []int {
	var out []int
	for _, f := range strings.Split(list, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			fmt.Fprintf(os.Stderr, "cdc-bench: %s: %q is not a positive rate\n", flagName, f)
			os.Exit(2)
		}
		out = append(out, n)
	}
	return out
}

func run(ctx context.Context, o bench.Options, out string) error {
	if o.CDC == "" {
		dir, err := os.MkdirTemp("", "cdc-bench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		o.CDC = filepath.Join(dir, "cdc")
		build := exec.CommandContext(ctx, "go", "build", "-o", o.CDC, "./cmd/cdc")
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			return fmt.Errorf("build cdc: %w", err)
		}
	}
	r, err := bench.Run(ctx, o)
	if err != nil {
		return err
	}
	r.Write(os.Stdout)
	if out != "" {
		f, err := os.Create(out)
		if err != nil {
			return err
		}
		defer f.Close()
		r.Write(f)
	}
	return nil
}
