package pglocal

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Options configures Start. The zero value starts a durable server with
// trust authentication on a free port in a fresh temp directory.
type Options struct {
	// Dir is the root directory. "" means a fresh temp dir that Stop removes.
	// If Dir/data/PG_VERSION exists the cluster is reused without initdb.
	Dir string
	// Port is the TCP port on 127.0.0.1; 0 picks a free one.
	Port int
	// Password is the password of superuser "postgres". "" means trust
	// authentication everywhere; otherwise TCP connections use
	// scram-sha-256 (the unix socket stays trust).
	Password string
	// Fast turns off fsync, synchronous_commit and full_page_writes, which
	// suits tests. false keeps durable defaults.
	Fast bool
	// Settings are extra server settings (-c name=value) that override the
	// defaults, e.g. {"wal_level": "replica"}.
	Settings map[string]string
	// Log receives the server's stdout and stderr; nil means Dir/postgres.log.
	Log io.Writer
	// Files are written into the data directory (mode 0600, owned by the
	// server's user) before the server starts, e.g. "server.crt" and
	// "server.key" with Settings {"ssl": "on"}.
	Files map[string][]byte
	// Bin is the directory of the server binaries (initdb, postgres); ""
	// means BinDir.
	Bin string
}

// StopMode selects how the postmaster is shut down.
type StopMode int

const (
	// FastStop (SIGINT) rolls back open transactions, disconnects clients and
	// shuts down cleanly.
	FastStop StopMode = iota
	// SmartStop (SIGTERM) waits for clients to disconnect before shutting down.
	SmartStop
	// ImmediateStop (SIGQUIT) aborts without a checkpoint; the next start runs
	// crash recovery.
	ImmediateStop
	// KillStop sends SIGKILL to the postmaster, simulating a crash; remaining
	// backends are killed as well once they fail to exit on their own.
	KillStop
)

// String returns the pg_ctl name of the mode.
func (m StopMode) String() string {
	switch m {
	case SmartStop:
		return "smart"
	case FastStop:
		return "fast"
	case ImmediateStop:
		return "immediate"
	case KillStop:
		return "kill"
	}
	return "StopMode(" + strconv.Itoa(int(m)) + ")"
}

// stopTimeout bounds how long a shutdown may take before SIGKILL.
const stopTimeout = 30 * time.Second

// Server is a running (or halted) local PostgreSQL server. Its methods are
// safe for concurrent use.
type Server struct {
	bin      string
	root     string
	dataDir  string
	sockDir  string
	tempRoot bool
	port     int
	password string
	args     []string
	owner    *owner
	logDest  io.Writer
	logFile  *os.File

	mu      sync.Mutex
	proc    *process // nil while halted
	stopped bool
}

// Start initialises (or reuses) a cluster and starts a postgres server,
// returning once it accepts connections.
func Start(ctx context.Context, opts Options) (*Server, error) {
	return start(ctx, opts, func(s *Server) error { return s.initdb(ctx, opts.Fast) })
}

// start starts a server whose new cluster seed creates.
func start(ctx context.Context, opts Options, seed func(*Server) error) (_ *Server, err error) {
	if err := platformSupported(); err != nil {
		return nil, err
	}
	bin := opts.Bin
	if bin == "" {
		var err error
		if bin, err = BinDir(); err != nil {
			return nil, err
		}
	} else if !hasServerBinaries(bin) {
		return nil, fmt.Errorf("find postgres binaries: %s does not contain initdb and postgres", bin)
	}
	own, err := lookupOwner()
	if err != nil {
		return nil, err
	}
	s := &Server{bin: bin, port: opts.Port, password: opts.Password, owner: own}
	s.args = serverArgs(opts)
	if err := s.setRoot(opts.Dir); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			s.closeLog()
			if s.tempRoot {
				_ = os.RemoveAll(s.root)
			}
		}
	}()
	if err := s.prepareDirs(); err != nil {
		return nil, err
	}
	if err := s.openLog(opts.Log); err != nil {
		return nil, err
	}
	if _, statErr := os.Stat(filepath.Join(s.dataDir, "PG_VERSION")); statErr != nil {
		if err := seed(s); err != nil {
			return nil, err
		}
	}
	if err := s.writeFiles(opts.Files); err != nil {
		return nil, err
	}
	if err := s.launchOnFreePort(ctx, opts.Port); err != nil {
		return nil, err
	}
	return s, nil
}

// setRoot picks the server's directories: dir, or a fresh temp dir.
func (s *Server) setRoot(dir string) error {
	if dir == "" {
		tmp, err := os.MkdirTemp("", "pglocal-")
		if err != nil {
			return fmt.Errorf("create temp dir: %w", err)
		}
		s.root, s.tempRoot = tmp, true
	} else {
		abs, err := filepath.Abs(dir)
		if err != nil {
			return fmt.Errorf("resolve dir: %w", err)
		}
		s.root = abs
	}
	s.dataDir = filepath.Join(s.root, "data")
	s.sockDir = filepath.Join(s.root, "sock")
	return nil
}

// openLog sends the server's output to dest, or to root/postgres.log.
func (s *Server) openLog(dest io.Writer) error {
	if dest != nil {
		s.logDest = dest
		return nil
	}
	f, err := os.OpenFile(filepath.Join(s.root, "postgres.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open log: %w", err)
	}
	s.logFile, s.logDest = f, f
	return nil
}

// writeFiles writes files into the data directory, owned by the server's
// user.
func (s *Server) writeFiles(files map[string][]byte) error {
	for name, data := range files {
		path := filepath.Join(s.dataDir, filepath.Base(name))
		if err := os.WriteFile(path, data, 0o600); err != nil {
			return fmt.Errorf("write %s: %w", name, err)
		}
		if err := chownTo(path, s.owner); err != nil {
			return err
		}
	}
	return nil
}

// launchOnFreePort starts the server on port, or, when port is 0, on a
// free one, trying another if someone else binds it first.
func (s *Server) launchOnFreePort(ctx context.Context, port int) error {
	const bindAttempts = 5
	for attempt := 1; ; attempt++ {
		if port == 0 {
			var err error
			if s.port, err = freePort(); err != nil {
				return err
			}
		}
		err := s.launch(ctx)
		if err == nil {
			return nil
		}
		var be *bindError
		if port != 0 || attempt >= bindAttempts || !errors.As(err, &be) || ctx.Err() != nil {
			return err
		}
	}
}

// DSN returns a connection URL for database over TCP, including the
// password when one is set.
func (s *Server) DSN(database string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.User("postgres"),
		Host:     "127.0.0.1:" + strconv.Itoa(s.port),
		Path:     "/" + database,
		RawQuery: "sslmode=disable",
	}
	if s.password != "" {
		u.User = url.UserPassword("postgres", s.password)
	}
	return u.String()
}

// Port returns the TCP port the server listens on.
func (s *Server) Port() int { return s.port }

// Dir returns the root directory holding data, sock and postgres.log.
func (s *Server) Dir() string { return s.root }

// CreateDatabase creates database name; it is not an error if it exists.
func (s *Server) CreateDatabase(ctx context.Context, name string) error {
	conn, err := pgconn.Connect(ctx, s.DSN("postgres"))
	if err != nil {
		return fmt.Errorf("create database %s: %w", name, err)
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()).ReadAll()
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && (pgErr.Code == "42P04" || pgErr.Code == "23505") {
		return nil // duplicate_database, or a concurrent create of the same name
	}
	if err != nil {
		return fmt.Errorf("create database %s: %w", name, err)
	}
	return nil
}

// Stop shuts the server down (fast mode, SIGKILL after 30s) and removes the
// root directory if Start created it. It is idempotent and may be called
// after a failed test or on a halted server.
func (s *Server) Stop() error {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return nil
	}
	s.stopped = true
	err := s.halt(FastStop)
	s.closeLog()
	if s.tempRoot {
		if rmErr := os.RemoveAll(s.root); rmErr != nil && err == nil {
			err = fmt.Errorf("remove temp dir: %w", rmErr)
		}
	}
	return err
}

// Halt stops the server with mode but keeps its directory, so that Resume
// can start it again; it is meant for outage tests. Halting a halted or
// stopped server is a no-op.
func (s *Server) Halt(mode StopMode) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.halt(mode)
}

// Resume starts a halted server again on the same directory and port and
// waits until it accepts connections. Resuming a running server is a no-op.
func (s *Server) Resume(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.resume(ctx)
}

// Restart stops the server with mode, then starts it again on the same
// directory and port and waits until it accepts connections.
func (s *Server) Restart(ctx context.Context, mode StopMode) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return errors.New("restart: server is stopped")
	}
	if err := s.halt(mode); err != nil {
		return fmt.Errorf("restart: %w", err)
	}
	return s.resume(ctx)
}

func (s *Server) resume(ctx context.Context) error {
	if s.stopped {
		return errors.New("resume: server is stopped")
	}
	if s.proc != nil {
		select {
		case <-s.proc.done:
			s.reap() // crashed on its own; start a new one
		default:
			return nil
		}
	}
	return s.launch(ctx)
}

// halt stops the running process, if any. Caller holds s.mu.
func (s *Server) halt(mode StopMode) error {
	p := s.proc
	if p == nil {
		return nil
	}
	sig, err := stopSignal(mode)
	if err != nil {
		return fmt.Errorf("halt: %w", err)
	}
	p.noteKids()
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		p.kill()
	}
	timer := time.NewTimer(stopTimeout)
	defer timer.Stop()
	select {
	case <-p.done:
	case <-timer.C:
		p.kill()
		<-p.done
	}
	s.reap()
	return nil
}

// reap waits for the remaining processes of the current server to go away
// and forgets it. Caller holds s.mu.
func (s *Server) reap() {
	p := s.proc
	if p == nil {
		return
	}
	s.proc = nil
	<-p.done
	// Backends notice the postmaster's death on their own; give them a
	// moment, then kill stragglers so shared memory is released before the
	// next start.
	if !waitUntil(5*time.Second, func() bool { return !anyAlive(p.kids) }) {
		killPids(p.kids)
		waitUntil(5*time.Second, func() bool { return !anyAlive(p.kids) })
	}
	// Let the log copier drain, so nothing writes to Options.Log after Stop.
	select {
	case <-p.copied:
	case <-time.After(5 * time.Second):
	}
}

func (s *Server) closeLog() {
	if s.logFile != nil {
		_ = s.logFile.Close()
		s.logFile = nil
	}
}

// waitUntil polls cond every 20ms until it is true or d has passed.
func waitUntil(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}
