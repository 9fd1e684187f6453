//go:build unix && !linux

package pglocal

import "syscall"

func setDeathSignal(a *syscall.SysProcAttr, sig syscall.Signal) {
	// No parent-death signal here; callers must Stop the server.
}

// childPids is not implemented here; the postmaster reaps its own children
// except after KillStop.
func childPids(int) []int { return nil }

// anyAlive reports whether one of pids is still running.
func anyAlive(pids []int) bool {
	for _, pid := range pids {
		if processAlive(pid) {
			return true
		}
	}
	return false
}

func looksLikePostgres(int) bool { return true }
