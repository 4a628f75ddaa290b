package testenv

import (
	"net"
	"sync"
	"testing"

	"github.com/emersion/go-smtp"
)

// ServeSMTP serves srv (a go-smtp server the test made and set up) on a free
// 127.0.0.1 port until the test ends, and returns its address.
func ServeSMTP(t testing.TB, srv *smtp.Server) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

// ServeTCP accepts connections on a free 127.0.0.1 port and hands each to
// handle in a goroutine of its own; handle owns the connection (it closes
// it). When the test ends the listener closes and ServeTCP waits for every
// handle to return. It returns the listener's address.
func ServeTCP(t testing.TB, handle func(net.Conn)) net.Addr {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { handle(c) })
		}
	})
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	return ln.Addr()
}
