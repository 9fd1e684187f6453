//go:build linux

package replication

import (
	"crypto/tls"
	"net"
	"syscall"

	"golang.org/x/sys/unix"
)

// socketOf returns the socket under c (below TLS, if any) and the
// connection it belongs to; raw is nil when c exposes no socket.
func socketOf(c net.Conn) (raw syscall.RawConn, under net.Conn) {
	if t, ok := c.(*tls.Conn); ok {
		c = t.NetConn()
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil, c
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil, c
	}
	return raw, c
}

// unreadBytes returns a function that reports how many bytes wait in c's
// socket receive queue, or nil when c exposes no socket to ask. For TLS it
// counts the encrypted bytes below the TLS layer, which is all the reader
// needs: whether reading now would find anything.
func unreadBytes(c net.Conn) func() (int, error) {
	raw, _ := socketOf(c)
	if raw == nil {
		return nil
	}
	return func() (n int, err error) {
		cerr := raw.Control(func(fd uintptr) { n, err = unix.IoctlGetInt(int(fd), unix.SIOCINQ) })
		if cerr != nil {
			return 0, cerr
		}
		return n, err
	}
}
