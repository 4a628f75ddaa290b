package testenv

import (
	"net"
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
