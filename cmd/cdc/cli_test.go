package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// cli runs cdc in-process with args and returns the exit code, stdout and
// stderr apart.
func cli(args ...string) (code int, stdout, stderr string) {
	var out, errOut bytes.Buffer
	code = Main(context.Background(), args, &out, &errOut)
	return code, out.String(), errOut.String()
}

// TestCLI_HelpVersionAndUsageErrors: help goes to stdout with exit 0, a
// command's help lists its own flags and examples before pointing to the
// configuration list, a usage error is one line and a pointer to -h with
// exit 2, and the version comes from the build info.
func TestCLI_HelpVersionAndUsageErrors(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"-h"}, {"help"}} {
		if code, out, errOut := cli(args...); code != 0 || !strings.Contains(out, "verify") || errOut != "" {
			t.Errorf("cdc %v: exit %d, stdout %d bytes, stderr %q; want the command list on stdout, exit 0", args, code, len(out), errOut)
		}
	}
	if code, _, errOut := cli(); code != exitUsage || !strings.Contains(errOut, "commands:") {
		t.Errorf("cdc alone: exit %d, stderr %q; want usage on stderr, exit 2", code, errOut)
	}
	for _, args := range [][]string{{"help", "verify"}, {"verify", "-h"}, {"verify", "--help"}} {
		code, out, errOut := cli(args...)
		full, cfg := strings.Index(out, "-full"), strings.Index(out, "cdc help config")
		if code != 0 || errOut != "" || !strings.HasPrefix(out, "cdc verify: prove chat equals the source") ||
			full < 0 || cfg < full || !strings.Contains(out, "examples:\n  cdc verify") || strings.Contains(out, "-sync-interval-minutes") {
			t.Errorf("cdc %v: exit %d, stderr %q, stdout:\n%s\nwant its purpose, own flags, examples, then the pointer to cdc help config", args, code, errOut, out)
		}
	}
	if code, out, _ := cli("errors", "-h"); code != 0 || !strings.Contains(out, "subcommands: list, retry, resolve") {
		t.Errorf("cdc errors -h: exit %d\n%s", code, out)
	}
	if code, out, _ := cli("help", "config"); code != 0 || !strings.Contains(out, "SYNC_INTERVAL_MINUTES") || !strings.Contains(out, "--sync-interval-minutes") {
		t.Errorf("cdc help config: exit %d\n%s", code, out)
	}
	code, out, errOut := cli("verify", "--nope")
	if code != exitUsage || out != "" || strings.Count(errOut, "\n") != 1 || !strings.Contains(errOut, "run 'cdc verify -h'") {
		t.Errorf("cdc verify --nope: exit %d, stdout %q, stderr %q; want one line naming -h, exit 2", code, out, errOut)
	}
	if code, _, errOut := cli("nope"); code != exitUsage || strings.Count(errOut, "\n") != 1 || !strings.Contains(errOut, "cdc help") {
		t.Errorf("cdc nope: exit %d, stderr %q", code, errOut)
	}
	code, _, errOut = cli("verify", "--sync-mode", "x", "--max-retries", "-3")
	if code != exitUsage || strings.Count(errOut, "\n") != 2 || !strings.Contains(errOut, "cdc: SYNC_MODE:") || !strings.Contains(errOut, "cdc: MAX_RETRIES:") {
		t.Errorf("two bad values: exit %d, stderr %q; want both, one line each, exit 2", code, errOut)
	}
	for _, args := range [][]string{{"version"}, {"--version"}} {
		if code, out, _ := cli(args...); code != 0 || !strings.HasPrefix(out, "cdc ") || !strings.Contains(out, "go1.") {
			t.Errorf("cdc %v: exit %d, %q", args, code, out)
		}
	}
}
