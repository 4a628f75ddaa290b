// Command sinkd is the cluster test's destination: mailfwd's recording SMTP
// sink (pkg/sink) on :2525, optionally slow (-data-delay), with what it
// received served as JSON on :8080/messages for the test to compare byte for
// byte. It runs in a pod behind a Service that the chart's mailertable routes to.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/mailfwd/mailfwd/pkg/sink"
)

func main() {
	smtpAddr := flag.String("smtp", ":2525", "SMTP listen address")
	httpAddr := flag.String("http", ":8080", "listen address of GET /messages")
	delay := flag.Duration("data-delay", 0, "sleep before answering DATA (a slow destination)")
	flag.Parse()
	cfg := sink.Config{Hostname: "sink.mailfwd-test", Logger: slog.New(slog.NewTextHandler(os.Stderr, nil))}
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
	mux := http.NewServeMux()
	mux.HandleFunc("GET /messages", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(s.Messages())
	})
	mux.HandleFunc("GET /count", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, s.Count())
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
