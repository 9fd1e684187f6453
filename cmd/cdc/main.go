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
	"sort"
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

var commands = map[string]command{
	"run":       {"stream changes from the source to the chat database (the daemon)", cmdRun},
	"migrate":   {"create cdc's tables in chat, the chat table if absent, and the source publication", cmdMigrate},
	"dev":       {"start a throw-away local PostgreSQL with demo data and run the daemon against it", cmdDev},
	"reconcile": {"compare a window (--since, --from/--to) or the whole table (--full) and repair chat", cmdReconcile},
	"verify":    {"prove chat equals the source (--full: every row); exit 3 on drift", cmdVerify},
	"errors":    {"list, retry (re-read the source row) or resolve the changes chat refused (sync_errors)", cmdErrors},
	"teardown":  {"remove cdc from the source: its slot, publication and notify trigger (asks first)", cmdTeardown},
	"status":    {"show the health and progress of the running cdc (at HTTP_ADDR); exit 1 unless HEALTHY", cmdStatus},
}

// env is what a subcommand may touch of the outside world.
type env struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	src            config.Source
}

// Main runs the subcommand in args and returns the process exit code.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		usage(stderr)
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	cmd, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "cdc: unknown command %q\n", args[0])
		usage(stderr)
		return exitUsage
	}
	src, err := config.EnvSource(".env")
	if err != nil {
		fmt.Fprintln(stderr, "cdc:", err)
		return exitUsage
	}
	err = cmd.run(ctx, &env{stdin: os.Stdin, stdout: stdout, stderr: stderr, src: src}, args[1:])
	code := exitCode(err)
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(stderr, "cdc:", oneLine(err))
	}
	return code
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: cdc <command> [flags]\n\ncommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(w, "  %-10s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(w, "\nEvery setting is an environment variable (or .env entry) and a flag; see cdc <command> -h.")
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
	fs.SetOutput(e.stderr)
	loader := config.NewLoader(e.src, fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, nil, err
		}
		return nil, nil, usageError("%v", err)
	}
	if fs.NArg() > 0 {
		return nil, nil, usageError("unexpected argument %q", fs.Arg(0))
	}
	cfg, err := loader.Load()
	if err != nil {
		return nil, nil, err
	}
	return cfg, logging.New(e.stderr, cfg.LogLevel, cfg.LogFormat), nil
}
