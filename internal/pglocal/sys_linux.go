//go:build linux

package pglocal

import (
	"bytes"
	"os"
	"strconv"
	"syscall"
)

func setDeathSignal(a *syscall.SysProcAttr, sig syscall.Signal) { a.Pdeathsig = sig }

// procStat returns the state and parent pid of pid from /proc/PID/stat.
func procStat(pid string) (state string, ppid int, ok bool) {
	stat, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return "", 0, false
	}
	// Format: pid (comm) state ppid ...; comm may contain spaces.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return "", 0, false
	}
	f := bytes.Fields(stat[i+1:])
	if len(f) < 2 {
		return "", 0, false
	}
	ppid, err = strconv.Atoi(string(f[1]))
	return string(f[0]), ppid, err == nil
}

// childPids lists the children of pid. Postgres backends call setsid, so
// they cannot be found through the postmaster's process group.
func childPids(pid int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var kids []int
	for _, e := range entries {
		child, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if _, ppid, ok := procStat(e.Name()); ok && ppid == pid {
			kids = append(kids, child)
		}
	}
	return kids
}

// anyAlive reports whether one of pids is still running. Zombies count as
// gone: an init that does not reap orphans would keep them forever.
func anyAlive(pids []int) bool {
	for _, pid := range pids {
		if state, _, ok := procStat(strconv.Itoa(pid)); ok && state != "Z" && state != "X" {
			return true
		}
	}
	return false
}

// looksLikePostgres reports whether pid may be a postgres process, so that a
// pid reused by an unrelated program does not block a restart.
func looksLikePostgres(pid int) bool {
	comm, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/comm")
	if err != nil {
		return true
	}
	return bytes.Contains(comm, []byte("postgres")) || bytes.Contains(comm, []byte("postmaster"))
}
