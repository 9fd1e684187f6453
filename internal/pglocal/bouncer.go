package pglocal

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// BouncerOptions configure StartBouncer.
type BouncerOptions struct {
	// Mode is PgBouncer's pool_mode: session, transaction or statement.
	Mode string
	// PoolSize is default_pool_size, the server connections per database
	// and user (0: 20).
	PoolSize int
	// Users may log in besides postgres (auth_type trust still needs them
	// listed).
	Users []string
	// Bin is the pgbouncer program ("": found on PATH or /usr/sbin).
	Bin string
}

// Bouncer is a PgBouncer in front of one Server, on a port of its own,
// for every database of that server.
type Bouncer struct {
	mu   sync.Mutex
	bin  string
	dir  string
	port int
	own  *owner
	cmd  *exec.Cmd
	done chan struct{}
	tail *tailWriter
}

// BouncerBin returns the pgbouncer program, or an error saying how to
// install it.
func BouncerBin() (string, error) {
	if p, err := exec.LookPath("pgbouncer"); err == nil {
		return p, nil
	}
	if _, err := os.Stat("/usr/sbin/pgbouncer"); err == nil {
		return "/usr/sbin/pgbouncer", nil
	}
	return "", errors.New("pgbouncer not found: install it (Debian/Ubuntu: apt-get install pgbouncer; macOS: brew install pgbouncer)")
}

// StartBouncer starts PgBouncer in front of srv and waits until it
// accepts connections. Stop (or Kill) ends it.
func StartBouncer(ctx context.Context, srv *Server, opts BouncerOptions) (*Bouncer, error) {
	bin := opts.Bin
	if bin == "" {
		var err error
		if bin, err = BouncerBin(); err != nil {
			return nil, err
		}
	}
	if opts.Mode == "" {
		opts.Mode = "session"
	}
	if opts.PoolSize == 0 {
		opts.PoolSize = 20
	}
	own, err := lookupOwner()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(srv.root, "pgbouncer-"+strconv.FormatInt(time.Now().UnixNano(), 36))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("pgbouncer: %w", err)
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	users := `"postgres" ""` + "\n"
	for _, u := range opts.Users {
		users += strconv.Quote(u) + ` ""` + "\n"
	}
	ini := fmt.Sprintf(`[databases]
* = host=127.0.0.1 port=%d

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %d
unix_socket_dir =
auth_type = trust
auth_file = %s
admin_users = postgres
pool_mode = %s
default_pool_size = %d
max_client_conn = 500
pidfile = %s
server_login_retry = 1
`, srv.port, port, filepath.Join(dir, "users.txt"), opts.Mode, opts.PoolSize, filepath.Join(dir, "pgbouncer.pid"))
	for name, body := range map[string]string{"users.txt": users, "pgbouncer.ini": ini} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			return nil, fmt.Errorf("pgbouncer: %w", err)
		}
	}
	if err := chownTo(dir, own); err != nil {
		return nil, err
	}
	b := &Bouncer{bin: bin, dir: dir, port: port, own: own}
	if err := b.launch(ctx); err != nil {
		return nil, err
	}
	return b, nil
}

// DSN returns a connection URL for database through the pooler.
func (b *Bouncer) DSN(database string) string {
	u := url.URL{Scheme: "postgres", User: url.User("postgres"), Host: "127.0.0.1:" + strconv.Itoa(b.port),
		Path: "/" + database, RawQuery: "sslmode=disable"}
	return u.String()
}

// Port is the pooler's TCP port.
func (b *Bouncer) Port() int { return b.port }

// Restart kills the pooler (SIGKILL: every client and server connection
// through it drops) and starts it again on the same port.
func (b *Bouncer) Restart(ctx context.Context) error {
	b.Kill()
	return b.launch(ctx)
}

// Kill ends the pooler with SIGKILL and waits for it.
func (b *Bouncer) Kill() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.cmd == nil {
		return
	}
	_ = b.cmd.Process.Kill()
	<-b.done
	b.cmd = nil
	_ = os.Remove(filepath.Join(b.dir, "pgbouncer.pid"))
}

// Stop ends the pooler.
func (b *Bouncer) Stop() { b.Kill() }

func (b *Bouncer) launch(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	cmd := exec.Command(b.bin, filepath.Join(b.dir, "pgbouncer.ini"))
	cmd.Dir = b.dir
	cmd.Env = childEnv()
	b.tail = &tailWriter{}
	w := teeWriter{tail: b.tail}
	cmd.Stdout, cmd.Stderr = w, w
	cmd.SysProcAttr = procAttr(b.own, syscall.SIGKILL)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start pgbouncer: %w", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	b.cmd, b.done = cmd, done
	deadline := time.Now().Add(readyTimeout)
	for {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		conn, err := pgconn.Connect(cctx, b.DSN("pgbouncer"))
		cancel()
		if err == nil {
			_ = conn.Close(context.Background())
			return nil
		}
		select {
		case <-done:
			b.cmd = nil
			return fmt.Errorf("pgbouncer exited: %s", strings.TrimSpace(b.tail.lastLines(tailLines)))
		case <-ctx.Done():
			return fmt.Errorf("wait for pgbouncer: %w", ctx.Err())
		case <-time.After(readyPoll):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("wait for pgbouncer: not ready after %s: %w\n%s", readyTimeout, err, b.tail.lastLines(tailLines))
		}
	}
}
