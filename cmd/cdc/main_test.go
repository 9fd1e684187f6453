package main

import (
	"context"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/myusta/cdc/internal/pgtest"
)

// TestMain doubles as the cdc binary: with CDC_TEST_MAIN=1 the test binary
// runs Main, so tests start real cdc processes (and kill them with -9)
// without a separate build.
func TestMain(m *testing.M) {
	if os.Getenv("CDC_TEST_MAIN") == "1" {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		code := Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
		stop()
		os.Exit(code)
	}
	pgtest.Main(m)
}

// proc is a cdc process.
type proc struct {
	cmd  *exec.Cmd
	out  pgtest.Buffer
	done chan struct{}
	code int
}

// startCDC starts `cdc args...` with exactly env (plus PATH and HOME).
func startCDC(t *testing.T, env map[string]string, args ...string) *proc {
	t.Helper()
	return startCDCInput(t, env, "", args...)
}

// startCDCInput is startCDC with stdin as the process's standard input.
func startCDCInput(t *testing.T, env map[string]string, stdin string, args ...string) *proc {
	t.Helper()
	p := &proc{cmd: exec.Command(os.Args[0], args...), done: make(chan struct{})}
	if stdin != "" {
		p.cmd.Stdin = strings.NewReader(stdin)
	}
	p.cmd.Env = []string{"CDC_TEST_MAIN=1", "PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
	for k, v := range env {
		p.cmd.Env = append(p.cmd.Env, k+"="+v)
	}
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = p.cmd.Wait()
		p.code = p.cmd.ProcessState.ExitCode()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("output of cdc %s:\n%s", strings.Join(args, " "), p.out.String())
		}
	})
	return p
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *proc) kill() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// stop sends SIGTERM and returns the exit code, failing after timeout.
func (p *proc) stop(t *testing.T, timeout time.Duration) int {
	t.Helper()
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	return p.wait(t, timeout)
}

func (p *proc) wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-p.done:
		return p.code
	case <-time.After(timeout):
		t.Fatalf("cdc did not exit within %s", timeout)
		return -1
	}
}

func (p *proc) running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// waitOutput waits until the output contains s.
func (p *proc) waitOutput(t *testing.T, s string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !strings.Contains(p.out.String(), s) {
		if time.Now().After(deadline) {
			t.Fatalf("cdc output did not show %q within %s", s, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// runCDC runs `cdc args...` to completion and returns its exit code and output.
func runCDC(t *testing.T, env map[string]string, args ...string) (int, string) {
	t.Helper()
	p := startCDC(t, env, args...)
	code := p.wait(t, 2*time.Minute)
	return code, p.out.String()
}

func with(env map[string]string, kv ...string) map[string]string {
	out := make(map[string]string, len(env)+len(kv)/2)
	for k, v := range env {
		out[k] = v
	}
	for i := 0; i+1 < len(kv); i += 2 {
		out[kv[i]] = kv[i+1]
	}
	return out
}

// withHost is dsn (a URL) with its host and port replaced by host and the
// query parameters kv (key, value pairs) set.
func withHost(t *testing.T, dsn, host string, kv ...string) string {
	t.Helper()
	u, err := url.Parse(dsn)
	if err != nil {
		t.Fatal(err)
	}
	u.Host = host
	if len(kv) > 0 {
		q := u.Query()
		for i := 0; i+1 < len(kv); i += 2 {
			q.Set(kv[i], kv[i+1])
		}
		u.RawQuery = q.Encode()
	}
	return u.String()
}
