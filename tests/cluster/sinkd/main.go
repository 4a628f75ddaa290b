// Command sinkd is the cluster test's destination: mailfwd's recording SMTP
// sink (pkg/sink) on :2525, optionally slow (-data-delay), with what it
// received served as JSON on :8080/messages for the test to compare byte for
// byte, the most SMTP sessions it has had open at once on :8080/peak and the
// most deliveries in progress at once on :8080/peak-deliveries. It
// runs in a pod behind a Service that the chart's mailertable routes to.
// -tempfail-domain D answers RCPT TO a recipient in D with "421 4.7.0 Try
// again later" (after -tempfail-delay), the reply a provider throttling a
// sender gives.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailfwd/mailfwd/pkg/sink"
)

func main() {
	smtpAddr := flag.String("smtp", ":2525", "SMTP listen address")
	httpAddr := flag.String("http", ":8080", "listen address of GET /messages")
	delay := flag.Duration("data-delay", 0, "sleep before answering DATA (a slow destination)")
	logSessions := flag.Bool("log-sessions", false, "log each connection's open and close, with the number open")
	tempfail := flag.String("tempfail-domain", "", "answer RCPT TO this domain's recipients with 421 4.7.0 Try again later")
	tempfailDelay := flag.Duration("tempfail-delay", 0, "sleep before that 421 (a slow destination: each attempt holds a worker slot)")
	flag.Parse()
	cfg := sink.Config{Hostname: "sink.mailfwd-test", Logger: slog.New(slog.NewTextHandler(os.Stderr, nil))}
	// Deliveries in progress: a recipient accepted whose DATA has not been
	// answered yet. Unlike open connections, this does not depend on how
	// soon this process gets to close a connection after its 221 (on a
	// busy machine a worker's next session can be accepted first).
	var inFlight, peakInFlight atomic.Int64
	tf := strings.ToLower(*tempfail)
	cfg.OnRcpt = func(rcpt string, _ int) *smtp.SMTPError {
		if tf != "" && strings.HasSuffix(strings.ToLower(rcpt), "@"+tf) {
			time.Sleep(*tempfailDelay)
			return &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "Try again later"}
		}
		n := inFlight.Add(1)
		for p := peakInFlight.Load(); n > p && !peakInFlight.CompareAndSwap(p, n); p = peakInFlight.Load() {
		}
		return nil
	}
	cfg.OnData = func(_ string, rcpts []string, _ int) *smtp.SMTPError {
		inFlight.Add(-int64(len(rcpts)))
		return nil
	}
	if *delay > 0 {
		d := *delay
		cfg.DataDelay = func() time.Duration { return d }
	}
	s := sink.New(cfg)
	ln, err := net.Listen("tcp", *smtpAddr)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if *logSessions {
		ln = &loggingListener{Listener: ln, log: cfg.Logger}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /messages", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(s.Messages())
	})
	mux.HandleFunc("GET /count", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, s.Count())
	})
	// The most sessions (connections) open at once since start: what a
	// fleet-wide concurrency limit toward this destination must bound.
	mux.HandleFunc("GET /peak", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, s.PeakConnections())
	})
	// The most deliveries in progress at once (RCPT TO accepted, DATA not
	// yet answered; the test sends one recipient per message).
	mux.HandleFunc("GET /peak-deliveries", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, peakInFlight.Load())
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) })
	go func() {
		srv := &http.Server{Addr: *httpAddr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		fmt.Fprintln(os.Stderr, srv.ListenAndServe())
		os.Exit(1)
	}()
	fmt.Fprintln(os.Stderr, s.Serve(ln))
	os.Exit(1)
}

// loggingListener logs each connection's open and close and how many are
// open then: who held the sessions when /peak rose.
type loggingListener struct {
	net.Listener
	log  *slog.Logger
	open atomic.Int64
}

func (l *loggingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.log.Info("session open", "remote", c.RemoteAddr().String(), "open", l.open.Add(1))
	return &loggingConn{Conn: c, l: l, start: time.Now()}, nil
}

type loggingConn struct {
	net.Conn
	l     *loggingListener
	start time.Time
	once  sync.Once
}

func (c *loggingConn) Close() error {
	c.once.Do(func() {
		c.l.log.Info("session closed", "remote", c.RemoteAddr().String(), "open", c.l.open.Add(-1), "held", time.Since(c.start))
	})
	return c.Conn.Close()
}
