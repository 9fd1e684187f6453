//go:build unix

package pglocal

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
)

// owner is the unprivileged account the server runs as when we are root.
type owner struct {
	name   string
	uid    uint32
	gid    uint32
	groups []uint32
}

func platformSupported() error { return nil }

// lookupOwner returns nil when the current process is not root, otherwise
// the "postgres" user that initdb and postgres must run as.
func lookupOwner() (*owner, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("look up user postgres: running as root needs a 'postgres' user (useradd -r postgres): %w", err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("parse uid of postgres: %w", err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("parse gid of postgres: %w", err)
	}
	o := &owner{name: u.Username, uid: uint32(uid), gid: uint32(gid)}
	if ids, err := u.GroupIds(); err == nil {
		for _, id := range ids {
			if g, err := strconv.ParseUint(id, 10, 32); err == nil {
				o.groups = append(o.groups, uint32(g))
			}
		}
	}
	return o, nil
}

// procAttr returns the attributes for a child process: its own process
// group, the owner's credentials (if any) and a parent-death signal.
func procAttr(o *owner, deathSig syscall.Signal) *syscall.SysProcAttr {
	a := &syscall.SysProcAttr{Setpgid: true}
	if o != nil {
		a.Credential = &syscall.Credential{Uid: o.uid, Gid: o.gid, Groups: o.groups}
	}
	setDeathSignal(a, deathSig)
	return a
}

// chownTo hands path to the owner; it is a no-op when not running as root.
func chownTo(path string, o *owner) error {
	if o == nil {
		return nil
	}
	if err := os.Chown(path, int(o.uid), int(o.gid)); err != nil {
		return fmt.Errorf("chown %s: %w", path, err)
	}
	return nil
}

// checkTraversable verifies that the owner can search every ancestor of dir,
// which initdb and postgres need to reach their data directory.
func checkTraversable(dir string, o *owner) error {
	if o == nil {
		return nil
	}
	inGroup := func(gid uint32) bool {
		if gid == o.gid {
			return true
		}
		for _, g := range o.groups {
			if g == gid {
				return true
			}
		}
		return false
	}
	for p := filepath.Dir(dir); ; p = filepath.Dir(p) {
		fi, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("check %s: %w", p, err)
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if ok {
			perm := fi.Mode().Perm()
			var can bool
			switch {
			case st.Uid == o.uid:
				can = perm&0o100 != 0
			case inGroup(st.Gid):
				can = perm&0o010 != 0
			default:
				can = perm&0o001 != 0
			}
			if !can {
				return fmt.Errorf("check %s: directory is not traversable by user %s (try chmod o+x %s)", p, o.name, p)
			}
		}
		if p == filepath.Dir(p) {
			return nil
		}
	}
}

// stopSignal maps a StopMode to the signal sent to the postmaster.
func stopSignal(mode StopMode) (os.Signal, error) {
	switch mode {
	case SmartStop:
		return syscall.SIGTERM, nil
	case FastStop:
		return syscall.SIGINT, nil
	case ImmediateStop:
		return syscall.SIGQUIT, nil
	case KillStop:
		return syscall.SIGKILL, nil
	}
	return nil, fmt.Errorf("unknown stop mode %d", int(mode))
}

// processAlive reports whether a process with this pid exists.
func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// killPids sends SIGKILL to the processes that still look like postgres.
func killPids(pids []int) {
	for _, pid := range pids {
		if pid > 0 && looksLikePostgres(pid) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}
