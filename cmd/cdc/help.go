package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"runtime/debug"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/myusta/cdc/internal/config"
)

// examples are a command's example invocations, for its help.
var examples = map[string][]string{
	"run":       {"cdc run", "SYNC_MODE=notify cdc run --http-addr 0.0.0.0:8080"},
	"migrate":   {"cdc migrate", "SYNC_COLUMNS='id, email, \"firstName\" AS first_name, updated_at' cdc migrate --create-types"},
	"dev":       {"cdc dev", "cdc dev --load 100 --fresh"},
	"reconcile": {"cdc reconcile --since 1h", "cdc reconcile --full --dry-run"},
	"verify":    {"cdc verify", "cdc verify --full --json"},
	"errors":    {"cdc errors list", "cdc errors retry --all", "cdc errors resolve --id 42"},
	"teardown":  {"cdc teardown", "cdc teardown --yes"},
	"status":    {"cdc status", "cdc status --json"},
	"version":   {"cdc version"},
}

// cmdVersion prints the module version and the VCS revision the binary
// was built from.
func cmdVersion(_ context.Context, e *env, args []string) error {
	if len(args) > 0 {
		return usageError("cdc version takes no arguments")
	}
	fmt.Fprintln(e.stdout, version())
	return nil
}

// version describes the build: "cdc v1.2.3 (rev 1a2b3c4d5e6f, 2026-12-02T05:00:00Z, go1.26.0)".
func version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "cdc (unknown build)"
	}
	v := bi.Main.Version
	if v == "" {
		v = "(devel)"
	}
	var rev, at, dirty string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.time":
			at = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "+dirty"
			}
		}
	}
	parts := []string{}
	if rev != "" {
		parts = append(parts, "rev "+rev[:min(12, len(rev))]+dirty)
	}
	if at != "" {
		parts = append(parts, at)
	}
	parts = append(parts, bi.GoVersion)
	return "cdc " + v + " (" + strings.Join(parts, ", ") + ")"
}

// commandHelp prints name's help: what it does, its own flags, examples,
// and where the configuration is listed. own are the command's own flags
// (the configuration's flags are left to `cdc help config`).
func commandHelp(w io.Writer, name string, own *flag.FlagSet) {
	cmd := commands[strings.Fields(name)[0]]
	fmt.Fprintf(w, "cdc %s: %s\n\nusage: cdc %s [flags]\n", name, cmd.summary, name)
	if own != nil {
		n := 0
		own.VisitAll(func(*flag.Flag) { n++ })
		if n > 0 {
			fmt.Fprintln(w, "\nflags:")
			own.SetOutput(w)
			own.PrintDefaults()
		}
	}
	if ex := examples[strings.Fields(name)[0]]; len(ex) > 0 {
		fmt.Fprintln(w, "\nexamples:")
		for _, x := range ex {
			fmt.Fprintln(w, "  "+x)
		}
	}
	fmt.Fprintln(w, "\nEvery configuration variable (SOURCE_DATABASE_URL, SYNC_COLUMNS, …) is read from the")
	fmt.Fprintln(w, "environment or .env and may be given as a flag too (--sync-columns …): cdc help config lists them.")
}

// configHelp prints every configuration variable with its flag, default
// and meaning.
func configHelp(w io.Writer) {
	fmt.Fprintln(w, "configuration (environment variable or .env entry; the flag overrides it):")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "\nVARIABLE\tFLAG\tDEFAULT\tMEANING")
	for _, v := range config.Vars {
		def := v.Default
		if def == "" {
			def = "-"
		}
		if r := []rune(def); len(r) > 32 {
			def = string(r[:31]) + "…"
		}
		fmt.Fprintf(tw, "%s\t--%s\t%s\t%s\n", v.Name, v.FlagName(), def, v.Help)
	}
	_ = tw.Flush()
}

func commandNames() []string {
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}
