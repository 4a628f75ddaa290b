// Command proxyd is the cluster test's TCP proxy in front of the ingress: it
// accepts connections on each -listen address and forwards them to -upstream,
// starting each upstream connection with a PROXY protocol header (v1 or v2,
// per listener) that names the client, as a load balancer with proxy
// protocol does (AWS NLB, HAProxy send-proxy). The headers are written by
// github.com/pires/go-proxyproto.
//
//	proxyd -upstream mailfwd-ingress.mail.svc:25 -listen :2525=v1 -listen :2526=v2
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
)

type listens []string

func (l *listens) String() string     { return strings.Join(*l, ",") }
func (l *listens) Set(v string) error { *l = append(*l, v); return nil }

// maxConns bounds the connections forwarded at once (a test tool, but an
// unbounded accept loop is still a bad habit).
const maxConns = 256

func main() {
	upstream := flag.String("upstream", "", "host:port to forward to")
	var ls listens
	flag.Var(&ls, "listen", "ADDR=v1|v2: listen on ADDR, send that header version (repeatable)")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if *upstream == "" || len(ls) == 0 {
		fmt.Fprintln(os.Stderr, "proxyd: -upstream and -listen are required")
		os.Exit(2)
	}
	sem := make(chan struct{}, maxConns)
	errc := make(chan error, len(ls))
	for _, l := range ls {
		addr, v, _ := strings.Cut(l, "=")
		var version byte
		switch v {
		case "v1":
			version = 1
		case "v2":
			version = 2
		default:
			fmt.Fprintf(os.Stderr, "proxyd: -listen %s: want ADDR=v1 or ADDR=v2\n", l)
			os.Exit(2)
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		log.Info("listening", "addr", addr, "proxy_protocol", v, "upstream", *upstream)
		go func() { errc <- serve(ln, version, *upstream, sem, log) }()
	}
	fmt.Fprintln(os.Stderr, <-errc)
	os.Exit(1)
}

func serve(ln net.Listener, version byte, upstream string, sem chan struct{}, log *slog.Logger) error {
	for {
		c, err := ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		select {
		case sem <- struct{}{}:
		default:
			log.Warn("too many connections; closed", "client", c.RemoteAddr().String())
			c.Close()
			continue
		}
		go func() {
			defer func() { <-sem }()
			forward(c, version, upstream, log)
		}()
	}
}

func forward(c net.Conn, version byte, upstream string, log *slog.Logger) {
	defer c.Close()
	u, err := net.DialTimeout("tcp", upstream, 10*time.Second)
	if err != nil {
		log.Warn("upstream unreachable", "upstream", upstream, "err", err)
		return
	}
	defer u.Close()
	h := proxyproto.HeaderProxyFromAddrs(version, c.RemoteAddr(), c.LocalAddr())
	if _, err := h.WriteTo(u); err != nil {
		log.Warn("writing the PROXY header", "err", err)
		return
	}
	log.Info("forwarding", "client", c.RemoteAddr().String(), "upstream", u.RemoteAddr().String(), "proxy_protocol", version)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		_, _ = io.Copy(u, c)
		_ = u.(*net.TCPConn).CloseWrite()
	}()
	go func() {
		defer wg.Done()
		_, _ = io.Copy(c, u)
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
	}()
	wg.Wait()
}
