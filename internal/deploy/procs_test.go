package deploy

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/myusta/cdc/internal/pgtest"
)

// Helpers of the Prometheus tests: the cdc binary, processes, polling and
// Prometheus's HTTP API.

var (
	buildOnce sync.Once
	buildDir  string
	buildBin  string
	buildErr  error
)

// TestMain removes the cdc binary the tests built.
func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		_ = os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// cdcBinary builds ./cmd/cdc once per test binary and returns its path.
func cdcBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		goTool, err := exec.LookPath("go")
		if err != nil {
			buildErr = fmt.Errorf("the go command is not on PATH: %w", err)
			return
		}
		if buildDir, buildErr = os.MkdirTemp("", "cdc-deploy-test-"); buildErr != nil {
			return
		}
		buildBin = filepath.Join(buildDir, "cdc")
		cmd := exec.Command(goTool, "build", "-o", buildBin, "github.com/myusta/cdc/cmd/cdc")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build ./cmd/cdc: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildBin
}

// tool returns the path of a Prometheus program. A missing one fails the
// test rather than skipping it: CI installs the package (.ci/run).
func tool(t *testing.T, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is not on PATH: install Prometheus (Debian/Ubuntu: apt-get install prometheus), which provides promtool and prometheus", name)
	}
	return path
}

// proc is a program the test started, with its output.
type proc struct {
	name string
	cmd  *exec.Cmd
	out  pgtest.Buffer
	done chan struct{}
}

// start runs bin with args in dir, with exactly env plus PATH and HOME;
// the process is killed when the test ends, and its output logged if the
// test failed.
func start(t *testing.T, dir string, env map[string]string, bin string, args ...string) *proc {
	t.Helper()
	p := &proc{name: filepath.Base(bin), cmd: exec.Command(bin, args...), done: make(chan struct{})}
	p.cmd.Dir = dir
	p.cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
	for k, v := range env {
		p.cmd.Env = append(p.cmd.Env, k+"="+v)
	}
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop(10 * time.Second)
		if t.Failed() {
			out := p.out.String()
			if len(out) > 20000 {
				out = "…" + out[len(out)-20000:]
			}
			t.Logf("output of %s:\n%s", p.name, out)
		}
	})
	return p
}

// stop sends SIGTERM, then SIGKILL after grace, and reports whether the
// process exited by itself within grace.
func (p *proc) stop(grace time.Duration) bool {
	select {
	case <-p.done:
		return true
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return true
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
		return false
	}
}

// exited reports whether the process has ended.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// waitFor polls cond every 200 ms until it returns "" (done), failing the
// test with what it last said once timeout has passed.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		last := cond()
		if last == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s; last: %s", what, timeout, last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// freeLoopbackPort returns a TCP port free on 127.0.0.1 at the time of the
// call.
func freeLoopbackPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// httpGet returns the status and body of GET u ("" and the error text as
// body when the request fails).
func httpGet(ctx context.Context, u string) (int, string) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return 0, err.Error()
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, err.Error()
	}
	return resp.StatusCode, string(body)
}

// promClient calls a Prometheus server's HTTP API.
type promClient struct{ base string }

// promResponse is the envelope of every /api/v1 answer.
type promResponse struct {
	Status    string          `json:"status"`
	ErrorType string          `json:"errorType"`
	Error     string          `json:"error"`
	Data      json.RawMessage `json:"data"`
}

// get calls path with query and returns the data of a successful answer,
// or an error naming what Prometheus said.
func (c promClient) get(ctx context.Context, path string, query url.Values) (json.RawMessage, error) {
	u := c.base + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	code, body := httpGet(ctx, u)
	var r promResponse
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		return nil, fmt.Errorf("GET %s: status %d: %s", path, code, strings.TrimSpace(body))
	}
	if r.Status != "success" {
		return nil, fmt.Errorf("GET %s: %s: %s", path, r.ErrorType, r.Error)
	}
	return r.Data, nil
}

// promAlert is one active alert of /api/v1/alerts.
type promAlert struct {
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
	State       string            `json:"state"` // pending or firing
}

// alerts returns the active (pending or firing) alerts by name.
func (c promClient) alerts(ctx context.Context) (map[string]promAlert, error) {
	data, err := c.get(ctx, "/api/v1/alerts", nil)
	if err != nil {
		return nil, err
	}
	var d struct {
		Alerts []promAlert `json:"alerts"`
	}
	if err := json.Unmarshal(data, &d); err != nil {
		return nil, err
	}
	byName := map[string]promAlert{}
	for _, a := range d.Alerts {
		if prev, ok := byName[a.Labels["alertname"]]; !ok || prev.State != "firing" {
			byName[a.Labels["alertname"]] = a
		}
	}
	return byName, nil
}

// vectorSample is one sample of an instant query's result.
type vectorSample struct {
	Metric map[string]string `json:"metric"`
	Value  [2]any            `json:"value"`
}

// query evaluates expr now and returns its samples (a scalar result is
// one sample without labels).
func (c promClient) query(ctx context.Context, expr string) ([]vectorSample, error) {
	data, err := c.get(ctx, "/api/v1/query", url.Values{"query": {expr}})
	if err != nil {
		return nil, err
	}
	var d struct {
		ResultType string          `json:"resultType"`
		Result     json.RawMessage `json:"result"`
	}
	if err := json.Unmarshal(data, &d); err != nil {
		return nil, err
	}
	switch d.ResultType {
	case "vector":
		var v []vectorSample
		return v, json.Unmarshal(d.Result, &v)
	case "scalar":
		var s [2]any
		return []vectorSample{{Value: s}}, json.Unmarshal(d.Result, &s)
	}
	return nil, fmt.Errorf("result type %s, want a vector", d.ResultType)
}
