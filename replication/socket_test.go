//go:build linux

package replication

import (
	"crypto/tls"
	"net"
	"testing"
	"time"
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
