//go:build linux

package replication

import (
	"crypto/tls"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// tcpPair returns both ends of a loopback TCP connection, closed when the
// test ends.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		accepted <- c
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	server = <-accepted
	if server == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { server.Close() })
	return client, server
}

func TestUnreadBytes(t *testing.T) {
	client, server := tcpPair(t)

	unread := unreadBytes(client)
	if unread == nil {
		t.Fatal("a TCP connection exposes its socket; unreadBytes returned nil")
	}
	if n, err := unread(); n != 0 || err != nil {
		t.Fatalf("nothing sent yet: unread = %d, %v", n, err)
	}
	if _, err := server.Write([]byte("7 bytes")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for n, _ := unread(); n != 7; n, _ = unread() {
		if time.Now().After(deadline) {
			t.Fatalf("7 bytes sent: unread = %d", n)
		}
		time.Sleep(time.Millisecond)
	}
	buf := make([]byte, 16)
	if n, err := client.Read(buf); n != 7 || err != nil {
		t.Fatalf("read %d, %v", n, err)
	}
	if n, err := unread(); n != 0 || err != nil {
		t.Fatalf("all read: unread = %d, %v", n, err)
	}

	if unreadBytes(tls.Client(client, &tls.Config{InsecureSkipVerify: true})) == nil {
		t.Error("TLS over TCP: want the TCP socket asked, got nil")
	}
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if unreadBytes(a) != nil {
		t.Error("net.Pipe has no socket: want nil, so the reader never rests")
	}
}

// TestQuieter: with the low-water mark raised, bytes arriving do not wake
// a reader waiting on the socket; restoring it does, at once. The TCP
// window clamp is left as it was.
func TestQuieter(t *testing.T) {
	client, server := tcpPair(t)

	quiet := quieter(client)
	if quiet == nil {
		t.Fatal("a TCP connection: quieter returned nil")
	}
	clamp := func() int {
		var v int
		raw, _ := client.(*net.TCPConn).SyscallConn()
		_ = raw.Control(func(fd uintptr) { v, _ = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_WINDOW_CLAMP) })
		return v
	}
	before := clamp()
	if err := quiet(true); err != nil {
		t.Fatal(err)
	}
	woke := make(chan time.Time, 1)
	go func() {
		_ = client.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, _ = client.Read(make([]byte, 16))
		woke <- time.Now()
	}()
	time.Sleep(50 * time.Millisecond) // the reader is waiting on the socket
	if _, err := server.Write([]byte("7 bytes")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-woke:
		t.Fatal("7 bytes woke the reader although the low-water mark was raised")
	case <-time.After(300 * time.Millisecond):
	}
	lowered := time.Now()
	if err := quiet(false); err != nil {
		t.Fatal(err)
	}
	select {
	case at := <-woke:
		t.Logf("reader woke %s after the mark was restored", at.Sub(lowered))
	case <-time.After(2 * time.Second):
		t.Fatal("restoring the low-water mark did not wake the reader")
	}
	if after := clamp(); after != before {
		t.Errorf("TCP window clamp %d before, %d after", before, after)
	}

	if quieter(tls.Client(client, &tls.Config{InsecureSkipVerify: true})) == nil {
		t.Error("TLS over TCP: want the TCP socket's mark, got nil")
	}
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if quieter(a) != nil {
		t.Error("net.Pipe has no socket: want nil")
	}
	dir := t.TempDir()
	uln, err := net.Listen("unix", dir+"/s")
	if err != nil {
		t.Fatal(err)
	}
	defer uln.Close()
	go func() {
		if c, err := uln.Accept(); err == nil {
			defer c.Close()
		}
	}()
	uc, err := net.Dial("unix", dir+"/s")
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	if quieter(uc) != nil {
		t.Error("a Unix socket: want nil (its mark changes what a read returns, not only wake-ups)")
	}
}
