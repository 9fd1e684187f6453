package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// cdcProc is a `cdc run` process whose log lines and resident memory the
// benchmark watches.
type cdcProc struct {
	cmd     *exec.Cmd
	started time.Time
	done    chan struct{}

	mu      sync.Mutex
	lines   []map[string]any // JSON log lines
	waiters []lineWaiter
	peakRSS int64 // bytes, since the last resetPeak
	log     io.Writer
}

type lineWaiter struct {
	msg string
	ch  chan map[string]any
}

// startCDC runs `bin run` with env and starts sampling its RSS every 20 ms.
func startCDC(bin string, env map[string]string, log io.Writer) (*cdcProc, error) {
	cmd := exec.Command(bin, "run")
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME"), "LOG_FORMAT=json"}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	out, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stdout = log
	p := &cdcProc{cmd: cmd, done: make(chan struct{}), log: log}
	p.started = time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start cdc: %w", err)
	}
	go p.read(out)
	go p.sample()
	return p, nil
}

func (p *cdcProc) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var m map[string]any
		if json.Unmarshal(line, &m) != nil {
			fmt.Fprintf(p.log, "cdc: %s\n", line)
			continue
		}
		if lvl, _ := m["level"].(string); lvl == "WARN" || lvl == "ERROR" {
			fmt.Fprintf(p.log, "cdc: %s\n", line)
		}
		p.mu.Lock()
		p.lines = append(p.lines, m)
		kept := p.waiters[:0]
		for _, w := range p.waiters {
			if m["msg"] == w.msg {
				w.ch <- m
			} else {
				kept = append(kept, w)
			}
		}
		p.waiters = kept
		p.mu.Unlock()
	}
	_ = p.cmd.Wait()
	close(p.done)
}

// sample records the peak resident set size from /proc.
func (p *cdcProc) sample() {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-p.done:
			return
		case <-t.C:
		}
		rss := residentBytes(p.cmd.Process.Pid)
		p.mu.Lock()
		if rss > p.peakRSS {
			p.peakRSS = rss
		}
		p.mu.Unlock()
	}
}

// residentBytes reads VmRSS of pid; 0 when unavailable.
func residentBytes(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb * 1024
		}
	}
	return 0
}

// peak returns the peak RSS since the last reset and resets it.
func (p *cdcProc) peak() int64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	v := p.peakRSS
	p.peakRSS = residentBytes(p.cmd.Process.Pid)
	return max(v, p.peakRSS)
}

// waitLog waits for a log line with the given msg (including one already seen).
func (p *cdcProc) waitLog(ctx context.Context, msg string) (map[string]any, error) {
	ch := make(chan map[string]any, 1)
	p.mu.Lock()
	for _, m := range p.lines {
		if m["msg"] == msg {
			p.mu.Unlock()
			return m, nil
		}
	}
	p.waiters = append(p.waiters, lineWaiter{msg, ch})
	p.mu.Unlock()
	select {
	case m := <-ch:
		return m, nil
	case <-p.done:
		return nil, fmt.Errorf("cdc exited (%v) before logging %q", p.cmd.ProcessState, msg)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// stop ends the process with SIGTERM (a clean shutdown) and waits.
func (p *cdcProc) stop() error {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(60 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("cdc did not stop within 60 s")
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		return fmt.Errorf("cdc exited with %d", code)
	}
	return nil
}

// lineCount is how many log lines were read so far.
func (p *cdcProc) lineCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.lines)
}

// batchTimings summarizes the "batch applied" debug lines logged after the
// first-th line: apply time, batch age, receive delay and its part before
// the walsender sent the commit, p50/p95/p99 ms.
func (p *cdcProc) batchTimings(first int) (apply, age, receive, send [3]float64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	keys := []string{"apply_ms", "age_ms", "receive_delay_ms", "send_delay_ms"}
	vals := make([][]float64, len(keys))
	for _, m := range p.lines[first:] {
		if m["msg"] != "batch applied" {
			continue
		}
		for i, k := range keys {
			v, _ := m[k].(float64)
			vals[i] = append(vals[i], v)
		}
	}
	return quantiles(vals[0]), quantiles(vals[1]), quantiles(vals[2]), quantiles(vals[3])
}

// reconcileRuns describes the reconcile runs cdc logged since line first
// (a scheduled run inside a steady window adds its load to the stream's).
func (p *cdcProc) reconcileRuns(first int) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var runs []string
	for _, m := range p.lines[first:] {
		msg, _ := m["msg"].(string)
		if !strings.HasPrefix(msg, "reconcile ") || msg == "reconcile in progress" {
			continue
		}
		run := fmt.Sprintf("%s, took %v", strings.TrimPrefix(msg, "reconcile "), m["took"])
		if slices, ok := m["slices"].(float64); ok {
			run += fmt.Sprintf(" (%.0f slices, rested %v)", slices, m["rested"])
		}
		runs = append(runs, run)
	}
	if len(runs) == 0 {
		return "none"
	}
	return strings.Join(runs, "; ")
}
