//go:build !linux

package replication

import "net"

// unreadBytes returns nil: only Linux reports a socket's unread bytes in a
// way the reader relies on, so elsewhere it lingers without resting.
func unreadBytes(net.Conn) func() (int, error) { return nil }
