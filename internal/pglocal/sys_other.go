//go:build !unix

package pglocal

import (
	"errors"
	"os"
	"syscall"
)

type owner struct {
	name string
}

func platformSupported() error {
	return errors.New("start postgres: pglocal supports only unix-like systems")
}

func lookupOwner() (*owner, error)                         { return nil, nil }
func procAttr(*owner, syscall.Signal) *syscall.SysProcAttr { return nil }
func chownTo(string, *owner) error                         { return nil }
func checkTraversable(string, *owner) error                { return nil }
func stopSignal(StopMode) (os.Signal, error)               { return os.Kill, nil }
func processAlive(int) bool                                { return false }
func killPids([]int)                                       {}
func childPids(int) []int                                  { return nil }
func anyAlive([]int) bool                                  { return false }
func looksLikePostgres(int) bool                           { return true }
