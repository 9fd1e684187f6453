package pglocal

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
)

// maxSocketPath returns the size of sun_path minus its terminating NUL.
func maxSocketPath() int {
	if runtime.GOOS == "linux" {
		return 107
	}
	return 103
}

// prepareDirs creates root, data and sock with the right modes and, when
// running as root, hands them to the postgres user.
func (s *Server) prepareDirs() error {
	// ".s.PGSQL.65535" is the longest socket name postgres creates.
	if n := len(filepath.Join(s.sockDir, ".s.PGSQL.65535")); n > maxSocketPath() {
		return fmt.Errorf("check socket dir: path %s is too long for a unix socket (%d > %d bytes); use a shorter Dir", s.sockDir, n, maxSocketPath())
	}
	if err := os.MkdirAll(s.root, 0o755); err != nil {
		return fmt.Errorf("create dir: %w", err)
	}
	if s.owner != nil {
		// os.MkdirTemp creates 0700; the postgres user must traverse it.
		if err := os.Chmod(s.root, 0o755); err != nil {
			return fmt.Errorf("chmod %s: %w", s.root, err)
		}
		if err := checkTraversable(s.root, s.owner); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(s.dataDir, 0o700); err != nil {
		return fmt.Errorf("create data dir: %w", err)
	}
	if err := os.Chmod(s.dataDir, 0o700); err != nil {
		return fmt.Errorf("chmod data dir: %w", err)
	}
	if err := os.MkdirAll(s.sockDir, 0o755); err != nil {
		return fmt.Errorf("create socket dir: %w", err)
	}
	for _, p := range []string{s.root, s.dataDir, s.sockDir} {
		if err := chownTo(p, s.owner); err != nil {
			return err
		}
	}
	return nil
}

// initdb creates a new cluster in s.dataDir. It tries the C.UTF-8 locale
// first and falls back to C where that locale is not installed.
func (s *Server) initdb(ctx context.Context, fast bool) error {
	auth := "trust"
	args := []string{"-D", s.dataDir, "-U", "postgres", "-E", "UTF8", "--auth-local=trust"}
	if s.password != "" {
		auth = "scram-sha-256"
		pwfile := filepath.Join(s.root, "pwfile")
		if err := os.WriteFile(pwfile, []byte(s.password+"\n"), 0o600); err != nil {
			return fmt.Errorf("write pwfile: %w", err)
		}
		defer os.Remove(pwfile)
		if err := chownTo(pwfile, s.owner); err != nil {
			return err
		}
		args = append(args, "--pwfile="+pwfile)
	}
	args = append(args, "--auth-host="+auth)
	if fast {
		args = append(args, "--no-sync")
	}
	var lastErr error
	for _, locale := range []string{"C.UTF-8", "C"} {
		out, err := s.runInitdb(ctx, append(args, "--locale="+locale))
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("initdb: %w", ctx.Err())
		}
		lastErr = fmt.Errorf("initdb: %w\n%s", err, strings.TrimSpace(out))
		// initdb cleans up after itself, but make sure the retry starts from
		// an empty directory.
		if err := emptyDir(s.dataDir); err != nil {
			return fmt.Errorf("initdb: %w", err)
		}
	}
	return lastErr
}

func (s *Server) runInitdb(ctx context.Context, args []string) (string, error) {
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, filepath.Join(s.bin, "initdb"), args...)
	cmd.Dir = s.root
	cmd.Env = childEnv()
	cmd.Stdout = &out
	cmd.Stderr = &out
	cmd.SysProcAttr = procAttr(s.owner, syscall.SIGKILL)
	err := cmd.Run()
	return out.String(), err
}

// emptyDir removes everything inside dir but keeps dir itself.
func emptyDir(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// childEnv is the environment for initdb and postgres: ours without the
// libpq/server variables that could redirect them.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PGDATA=") || strings.HasPrefix(kv, "PGPORT=") ||
			strings.HasPrefix(kv, "PGHOST=") || strings.HasPrefix(kv, "PGOPTIONS=") {
			continue
		}
		env = append(env, kv)
	}
	return env
}
