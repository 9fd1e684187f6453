package pglocal

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// startServer starts a server and always stops it when the test ends.
func startServer(t *testing.T, opts Options) *Server {
	t.Helper()
	s, err := Start(t.Context(), opts)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("Stop: %v", err)
		}
	})
	return s
}

func connect(ctx context.Context, dsn string) (*pgx.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return pgx.Connect(ctx, dsn)
}

// queryString runs a single-value query on dsn.
func queryString(t *testing.T, dsn, sql string) string {
	t.Helper()
	conn, err := connect(t.Context(), dsn)
	if err != nil {
		t.Fatalf("connect %s: %v", dsn, err)
	}
	defer conn.Close(context.Background())
	var v string
	if err := conn.QueryRow(t.Context(), sql).Scan(&v); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return v
}

func execSQL(t *testing.T, dsn, sql string) {
	t.Helper()
	conn, err := connect(t.Context(), dsn)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(t.Context(), sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// traversableDir makes a directory outside t.TempDir (whose 0700 parents the
// postgres user cannot traverse when tests run as root).
func traversableDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "pglocal-test-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

func TestStartDefaults(t *testing.T) {
	t.Parallel()
	s := startServer(t, Options{})
	if got := queryString(t, s.DSN("postgres"), "SHOW wal_level"); got != "logical" {
		t.Errorf("wal_level = %q, want logical", got)
	}
	if got := queryString(t, s.DSN("postgres"), "SHOW fsync"); got != "on" {
		t.Errorf("fsync = %q, want on (durable defaults)", got)
	}
	if got := queryString(t, s.DSN("postgres"), "SHOW max_replication_slots"); got != "20" {
		t.Errorf("max_replication_slots = %q, want 20", got)
	}
	if want := "postgres://postgres@127.0.0.1:" + strconv.Itoa(s.Port()) + "/postgres?sslmode=disable"; s.DSN("postgres") != want {
		t.Errorf("DSN = %q, want %q", s.DSN("postgres"), want)
	}
	for _, name := range []string{"data/PG_VERSION", "postgres.log", "sock/.s.PGSQL." + strconv.Itoa(s.Port())} {
		if _, err := os.Stat(filepath.Join(s.Dir(), name)); err != nil {
			t.Errorf("stat %s: %v", name, err)
		}
	}
}

func TestStopRemovesTempDir(t *testing.T) {
	t.Parallel()
	s := startServer(t, Options{Fast: true})
	dir := s.Dir()
	if err := s.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("stat %s after Stop: %v, want not exist", dir, err)
	}
	if err := s.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	if err := s.Halt(FastStop); err != nil {
		t.Errorf("Halt after Stop: %v", err)
	}
	if err := s.Resume(t.Context()); err == nil {
		t.Error("Resume after Stop succeeded, want error")
	}
}

func TestCreateDatabase(t *testing.T) {
	t.Parallel()
	s := startServer(t, Options{Fast: true})
	for range 2 { // the second call finds it existing
		if err := s.CreateDatabase(t.Context(), "app-db"); err != nil {
			t.Fatalf("CreateDatabase: %v", err)
		}
	}
	if got := queryString(t, s.DSN("app-db"), "SELECT current_database()"); got != "app-db" {
		t.Errorf("current_database() = %q, want app-db", got)
	}
}

func TestRestartImmediateKeepsRows(t *testing.T) {
	t.Parallel()
	// synchronous_commit=on: with Fast's asynchronous commit an immediate
	// shutdown may lose the last acknowledged commits.
	s := startServer(t, Options{Fast: true, Settings: map[string]string{"synchronous_commit": "on"}})
	dsn := s.DSN("postgres")
	if got := queryString(t, dsn, "SHOW fsync"); got != "off" {
		t.Errorf("fsync = %q, want off (Fast)", got)
	}
	execSQL(t, dsn, "CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1, 100)")
	port := s.Port()
	if err := s.Restart(t.Context(), ImmediateStop); err != nil {
		t.Fatalf("Restart: %v", err)
	}
	if s.Port() != port {
		t.Errorf("port changed from %d to %d", port, s.Port())
	}
	if got := queryString(t, dsn, "SELECT count(*)::text FROM t"); got != "100" {
		t.Errorf("rows after restart = %s, want 100", got)
	}
}

func TestHaltResume(t *testing.T) {
	t.Parallel()
	s := startServer(t, Options{Fast: true})
	dsn := s.DSN("postgres")
	execSQL(t, dsn, "CREATE TABLE t (id int); INSERT INTO t VALUES (1); CHECKPOINT")
	for _, mode := range []StopMode{FastStop, KillStop, SmartStop} {
		s.mu.Lock()
		backends := childPids(s.proc.pid)
		s.mu.Unlock()
		if err := s.Halt(mode); err != nil {
			t.Fatalf("Halt(%v): %v", mode, err)
		}
		if anyAlive(backends) {
			t.Errorf("backends %v still alive after Halt(%v)", backends, mode)
		}
		if err := s.Halt(mode); err != nil {
			t.Fatalf("second Halt(%v): %v", mode, err)
		}
		if conn, err := connect(t.Context(), dsn); err == nil {
			conn.Close(context.Background())
			t.Fatalf("connect after Halt(%v) succeeded", mode)
		}
		if err := s.Resume(t.Context()); err != nil {
			t.Fatalf("Resume after %v: %v", mode, err)
		}
		if got := queryString(t, dsn, "SELECT count(*)::text FROM t"); got != "1" {
			t.Errorf("rows after Halt(%v)+Resume = %s, want 1", mode, got)
		}
	}
}

func TestPassword(t *testing.T) {
	t.Setenv("PGPASSWORD", "")
	t.Setenv("PGPASSFILE", filepath.Join(os.DevNull, "none"))
	const pw = "s3cr3t p@ss/:?"
	s := startServer(t, Options{Fast: true, Password: pw})
	if got := queryString(t, s.DSN("postgres"), "SELECT current_user"); got != "postgres" {
		t.Errorf("current_user = %q", got)
	}
	tcp := "postgres://postgres@127.0.0.1:" + strconv.Itoa(s.Port()) + "/postgres?sslmode=disable"
	if conn, err := connect(t.Context(), tcp); err == nil {
		conn.Close(context.Background())
		t.Error("TCP connect without password succeeded")
	}
	wrong := strings.Replace(s.DSN("postgres"), "s3cr3t", "wrong", 1)
	if conn, err := connect(t.Context(), wrong); err == nil {
		conn.Close(context.Background())
		t.Error("TCP connect with a wrong password succeeded")
	}
	sock := "host=" + filepath.Join(s.Dir(), "sock") + " port=" + strconv.Itoa(s.Port()) + " user=postgres dbname=postgres"
	if got := queryString(t, sock, "SELECT 'ok'"); got != "ok" {
		t.Errorf("unix socket without password: %q", got)
	}
	if _, err := os.Stat(filepath.Join(s.Dir(), "pwfile")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("pwfile left behind: %v", err)
	}
}

func TestReuseDir(t *testing.T) {
	t.Parallel()
	dir := traversableDir(t)
	s := startServer(t, Options{Dir: dir, Fast: true})
	execSQL(t, s.DSN("postgres"), "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('hello')")

	if s2, err := Start(t.Context(), Options{Dir: dir, Port: s.Port() + 1}); err == nil {
		_ = s2.Stop()
		t.Fatal("second Start on a running Dir succeeded")
	} else if !strings.Contains(err.Error(), "already running") {
		t.Errorf("second Start: %v, want 'already running'", err)
	}

	if err := s.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "data", "PG_VERSION")); err != nil {
		t.Fatalf("Stop removed a caller's Dir: %v", err)
	}
	s = startServer(t, Options{Dir: dir, Fast: true})
	if got := queryString(t, s.DSN("postgres"), "SELECT v FROM kept"); got != "hello" {
		t.Errorf("kept row = %q, want hello", got)
	}
}

func TestBinDir(t *testing.T) {
	dir, err := BinDir()
	if err != nil {
		t.Fatalf("BinDir: %v", err)
	}
	for _, name := range []string{"initdb", "postgres"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Errorf("%s not in %s: %v", name, dir, err)
		}
	}
	t.Setenv("PG_BIN", dir)
	if got, err := BinDir(); err != nil || got != dir {
		t.Errorf("BinDir with PG_BIN = %q, %v; want %q", got, err, dir)
	}
	t.Setenv("PG_BIN", t.TempDir())
	if _, err := BinDir(); err == nil {
		t.Error("BinDir with an empty PG_BIN succeeded")
	}
}
