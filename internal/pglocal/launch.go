package pglocal

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

const (
	readyTimeout = 60 * time.Second
	readyPoll    = 50 * time.Millisecond
	tailLines    = 20
)

// process is one run of the postmaster.
type process struct {
	cmd    *exec.Cmd
	pid    int
	kids   []int // backends seen before stopping; waited for after
	tail   *tailWriter
	done   chan struct{} // closed once the postmaster has exited
	err    error         // result of cmd.Wait; valid after done is closed
	copied chan struct{} // closed once all server output has been copied
}

// noteKids records the postmaster's current children, so that they can be
// waited for (or killed) once the postmaster is gone.
func (p *process) noteKids() {
	p.kids = append(p.kids, childPids(p.pid)...)
}

// kill SIGKILLs the postmaster and its children.
func (p *process) kill() {
	p.noteKids()
	_ = p.cmd.Process.Kill()
	killPids(p.kids)
}

// bindError reports that postgres could not listen on its port.
type bindError struct{ err error }

func (e *bindError) Error() string { return e.err.Error() }
func (e *bindError) Unwrap() error { return e.err }

// serverArgs returns the -c settings: defaults, then Fast, then opts.Settings.
func serverArgs(opts Options) []string {
	settings := map[string]string{
		"listen_addresses":        "127.0.0.1",
		"wal_level":               "logical",
		"max_wal_senders":         "20",
		"max_replication_slots":   "20",
		"max_connections":         "200",
		"shared_buffers":          "128MB",
		"logging_collector":       "off",
		"log_min_messages":        "warning",
		"unix_socket_permissions": "0777",
	}
	if opts.Fast {
		settings["fsync"] = "off"
		settings["synchronous_commit"] = "off"
		settings["full_page_writes"] = "off"
	}
	for k, v := range opts.Settings {
		settings[k] = v
	}
	keys := make([]string, 0, len(settings))
	for k := range settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	args := make([]string, 0, 2*len(keys))
	for _, k := range keys {
		args = append(args, "-c", k+"="+settings[k])
	}
	return args
}

// freePort returns a currently unused TCP port on 127.0.0.1.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find free port: %w", err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	if err := l.Close(); err != nil {
		return 0, fmt.Errorf("find free port: %w", err)
	}
	return port, nil
}

// checkPidFile fails if a live server owns the data directory and removes
// a stale postmaster.pid.
func (s *Server) checkPidFile() error {
	path := filepath.Join(s.dataDir, "postmaster.pid")
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read pid file: %w", err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	if pid, err := strconv.Atoi(strings.TrimSpace(line)); err == nil && processAlive(pid) && looksLikePostgres(pid) {
		return fmt.Errorf("check pid file: a server is already running on %s (pid %d)", s.root, pid)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove stale pid file: %w", err)
	}
	return nil
}

// launch starts the postmaster and waits until it accepts connections.
// Caller holds s.mu (or owns s exclusively).
func (s *Server) launch(ctx context.Context) error {
	if err := s.checkPidFile(); err != nil {
		return err
	}
	// Our own pipe rather than exec's: cmd.Wait then returns as soon as the
	// postmaster exits, even if orphaned backends still hold the pipe.
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("start postgres: %w", err)
	}
	args := append([]string{"-D", s.dataDir, "-p", strconv.Itoa(s.port), "-k", s.sockDir}, s.args...)
	cmd := exec.Command(filepath.Join(s.bin, "postgres"), args...)
	cmd.Dir = s.root
	cmd.Env = childEnv()
	cmd.Stdout = w
	cmd.Stderr = w
	cmd.SysProcAttr = procAttr(s.owner, syscall.SIGQUIT)
	err = cmd.Start()
	_ = w.Close()
	if err != nil {
		_ = r.Close()
		return fmt.Errorf("start postgres: %w", err)
	}
	p := &process{
		cmd:    cmd,
		pid:    cmd.Process.Pid,
		tail:   &tailWriter{},
		done:   make(chan struct{}),
		copied: make(chan struct{}),
	}
	go func() {
		_, _ = io.Copy(teeWriter{dest: s.logDest, tail: p.tail}, r)
		_ = r.Close()
		close(p.copied)
	}()
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	s.proc = p
	if err := s.waitReady(ctx, p); err != nil {
		p.kill()
		s.reap()
		return err
	}
	return nil
}

// waitReady polls until the server accepts connections, it exits, ctx is
// done or readyTimeout passes.
func (s *Server) waitReady(ctx context.Context, p *process) error {
	tctx, cancel := context.WithTimeout(ctx, readyTimeout)
	defer cancel()
	dsn := s.DSN("postgres")
	ticker := time.NewTicker(readyPoll)
	defer ticker.Stop()
	var lastErr error
	for {
		err := s.probe(tctx, dsn)
		if err == nil {
			return nil
		}
		lastErr = err
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && strings.HasPrefix(pgErr.Code, "28") {
			// Authentication failed. Unless our server is just dying because
			// another one holds the port, retrying will not help.
			select {
			case <-p.done:
				return exitError(p)
			case <-time.After(200 * time.Millisecond):
				return fmt.Errorf("connect to postgres: %w", err)
			}
		}
		select {
		case <-p.done:
			return exitError(p)
		case <-tctx.Done():
			if ctx.Err() != nil {
				return fmt.Errorf("wait for postgres: %w", ctx.Err())
			}
			return fmt.Errorf("wait for postgres: not ready after %s: %w\n%s", readyTimeout, lastErr, p.tail.lastLines(tailLines))
		case <-ticker.C:
		}
	}
}

// probe connects once and checks that the server answering is ours and not
// another one that grabbed the port first.
func (s *Server) probe(ctx context.Context, dsn string) error {
	actx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(actx, dsn)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	res, err := conn.Exec(actx, "SHOW data_directory").ReadAll()
	if err != nil {
		return err
	}
	if len(res) != 1 || len(res[0].Rows) != 1 || len(res[0].Rows[0]) != 1 {
		return errors.New("unexpected reply to SHOW data_directory")
	}
	if got := string(res[0].Rows[0][0]); !sameDir(got, s.dataDir) {
		return fmt.Errorf("port %d is served by another cluster (%s)", s.port, got)
	}
	return nil
}

// sameDir reports whether a and b name the same directory.
func sameDir(a, b string) bool {
	if filepath.Clean(a) == filepath.Clean(b) {
		return true
	}
	fa, errA := os.Stat(a)
	fb, errB := os.Stat(b)
	return errA == nil && errB == nil && os.SameFile(fa, fb)
}

// exitError describes a postmaster that exited during startup.
func exitError(p *process) error {
	// Give the copier a moment to collect the final messages.
	select {
	case <-p.copied:
	case <-time.After(time.Second):
	}
	status := "exit status 0"
	if p.err != nil {
		status = p.err.Error()
	}
	tail := p.tail.lastLines(tailLines)
	err := fmt.Errorf("start postgres: server exited (%s):\n%s", status, tail)
	if strings.Contains(tail, "could not bind") || strings.Contains(tail, "Address already in use") {
		return &bindError{err: err}
	}
	return err
}

// teeWriter copies server output to dest, ignoring its errors so that the
// pipe keeps draining, and remembers the tail.
type teeWriter struct {
	dest io.Writer
	tail *tailWriter
}

func (t teeWriter) Write(b []byte) (int, error) {
	t.tail.Write(b)
	if t.dest != nil {
		_, _ = t.dest.Write(b)
	}
	return len(b), nil
}

// tailWriter keeps the last few kilobytes written to it.
type tailWriter struct {
	mu  sync.Mutex
	buf []byte
}

const tailBytes = 16 << 10

func (t *tailWriter) Write(b []byte) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, b...)
	if len(t.buf) > 2*tailBytes {
		t.buf = append(t.buf[:0:0], t.buf[len(t.buf)-tailBytes:]...)
	}
}

// lastLines returns up to n trailing lines.
func (t *tailWriter) lastLines(n int) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	lines := bytes.Split(bytes.TrimRight(t.buf, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return string(bytes.Join(lines, []byte("\n")))
}
