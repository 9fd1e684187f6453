// Command cdc keeps the chat database's users table equal to the backend
// database's users table, by logical replication (or LISTEN/NOTIFY where
// replication is not allowed), and proves it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/myusta/cdc/internal/config"
	"github.com/myusta/cdc/internal/logging"
	"github.com/myusta/cdc/replication"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
	exitDrift   = 3
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// After the first signal starts a clean shutdown, a second one kills.
	context.AfterFunc(ctx, stop)
	code := Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// command is one subcommand.
type command struct {
	summary string
	run     func(ctx context.Context, e *env, args []string) error
}

// commands are cdc's subcommands (set in init: their help refers back
// to this table).
var commands map[string]command

func init() {
	commands = map[string]command{
		"run":       {"stream changes from the source to the chat database (the daemon)", cmdRun},
		"migrate":   {"create cdc's tables in chat, the chat table if absent, and the source publication", cmdMigrate},
		"dev":       {"start a throw-away local PostgreSQL with demo data and run the daemon against it", cmdDev},
		"reconcile": {"compare a window (--since, --from/--to) or the whole table (--full) and repair chat", cmdReconcile},
		"verify":    {"prove chat equals the source (--full: every row); exit 3 on drift", cmdVerify},
		"errors":    {"list, retry (re-read the source row) or resolve the changes chat refused (sync_errors)", cmdErrors},
		"teardown":  {"remove cdc from the source: its slot, publication and notify trigger (asks first)", cmdTeardown},
		"status":    {"show the health and progress of the running cdc (at HTTP_ADDR); exit 1 unless HEALTHY", cmdStatus},
		"version":   {"print cdc's version and the revision it was built from", cmdVersion},
	}
}

// env is what a subcommand may touch of the outside world.
type env struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	src            config.Source
}

// Main runs the subcommand in args and returns the process exit code.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return exitUsage
	}
	switch args[0] {
	case "-h", "--help":
		usage(stdout)
		return exitOK
	case "--version":
		args = []string{"version"}
	case "help":
		switch {
		case len(args) == 1:
			usage(stdout)
			return exitOK
		case args[1] == "config":
			configHelp(stdout)
			return exitOK
		}
		args = []string{args[1], "-h"} // cdc help CMD is cdc CMD -h
	}
	cmd, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "cdc: unknown command %q: run 'cdc help' for the list\n", args[0])
		return exitUsage
	}
	src, err := config.EnvSource(".env")
	if err != nil {
		fmt.Fprintln(stderr, "cdc:", err)
		return exitUsage
	}
	err = cmd.run(ctx, &env{stdin: os.Stdin, stdout: stdout, stderr: stderr, src: src}, args[1:])
	code := exitCode(err)
	var all config.Errors
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
	case errors.As(err, &all):
		for _, e := range all { // every configuration problem, one line each
			fmt.Fprintln(stderr, "cdc:", oneLine(e))
		}
	default:
		fmt.Fprintln(stderr, "cdc:", oneLine(err))
	}
	return code
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: cdc <command> [flags]\n\ncommands:")
	for _, n := range commandNames() {
		fmt.Fprintf(w, "  %-10s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(w, "\nRun 'cdc help <command>' (or cdc <command> -h) for a command's flags and examples, and")
	fmt.Fprintln(w, "'cdc help config' for every configuration variable (environment, .env or flag).")
}

// exitError carries a specific exit code.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// usageError marks bad command-line usage.
func usageError(format string, a ...any) error {
	return &exitError{code: exitUsage, err: fmt.Errorf(format, a...)}
}

func exitCode(err error) int {
	var ee *exitError
	var ce *config.Error
	var pe *replication.PreflightError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return exitOK
	case errors.As(err, &ee):
		return ee.code
	case errors.As(err, &ce), errors.As(err, &pe):
		return exitUsage
	}
	return exitFailure
}

func oneLine(err error) string { return strings.ReplaceAll(err.Error(), "\n", " ") }

// setup parses a subcommand's flags (every configuration variable has one)
// and returns the validated configuration and a logger.
func (e *env) setup(fs *flag.FlagSet, args []string) (*config.Config, *slog.Logger, error) {
	// The command's own flags, before the configuration adds its own: its
	// help lists these, and points to cdc help config for the rest.
	own := flag.NewFlagSet(fs.Name(), flag.ContinueOnError)
	fs.VisitAll(func(f *flag.Flag) { own.Var(f.Value, f.Name, f.Usage) })
	fs.SetOutput(io.Discard) // help and errors are printed here, once
	fs.Usage = func() {}
	loader := config.NewLoader(e.src, fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			commandHelp(e.stdout, fs.Name(), own)
			return nil, nil, err
		}
		return nil, nil, usageError("%v (run 'cdc %s -h')", err, fs.Name())
	}
	if fs.NArg() > 0 {
		return nil, nil, usageError("unexpected argument %q (run 'cdc %s -h')", fs.Arg(0), fs.Name())
	}
	cfg, err := loader.Load()
	if err != nil {
		return nil, nil, err
	}
	log := logging.New(e.stderr, cfg.LogLevel, cfg.LogFormat)
	for _, w := range cfg.Warnings {
		log.Warn(w)
	}
	return cfg, log, nil
}
