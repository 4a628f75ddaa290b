// Package natsembed runs a real nats-server with JetStream inside the
// process, for `make run` and tests: no external services needed.
package natsembed

import (
	"fmt"
	"net"
	"net/url"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Options for an embedded server.
type Options struct {
	Host     string // default 127.0.0.1
	Port     int    // -1 picks a free port
	StoreDir string // JetStream file store directory (required)
	// SyncAlways fsyncs every JetStream write before its PubAck; without it
	// nats-server syncs every 2 minutes. `make run` (cmd/dev) does not set
	// it: its daemons flush the store themselves (queue.Config.LocalStore).
	SyncAlways bool
	// Cluster, when ClusterPort is set: this server joins the JetStream
	// cluster ClusterName through Routes (nats-route://127.0.0.1:port).
	ServerName  string // default mailfwd-embedded
	ClusterName string
	ClusterPort int
	Routes      []string
}

// Start starts the server and waits until it accepts connections.
func Start(o Options) (*server.Server, error) {
	if o.StoreDir == "" {
		return nil, fmt.Errorf("natsembed: StoreDir is required")
	}
	if o.Host == "" {
		o.Host = "127.0.0.1"
	}
	if o.ServerName == "" {
		o.ServerName = "mailfwd-embedded"
	}
	opts := &server.Options{
		ServerName: o.ServerName,
		Host:       o.Host,
		Port:       o.Port,
		JetStream:  true,
		StoreDir:   o.StoreDir,
		NoSigs:     true,
		SyncAlways: o.SyncAlways,
	}
	if o.ClusterPort != 0 {
		opts.Cluster = server.ClusterOpts{Name: o.ClusterName, Host: o.Host, Port: o.ClusterPort}
		for _, r := range o.Routes {
			u, err := url.Parse(r)
			if err != nil {
				return nil, fmt.Errorf("natsembed: route %q: %w", r, err)
			}
			opts.Routes = append(opts.Routes, u)
		}
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("natsembed: %w", err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		return nil, fmt.Errorf("natsembed: server on %s not ready after 10s", net.JoinHostPort(o.Host, strconv.Itoa(o.Port)))
	}
	return s, nil
}
