package rig

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// NATSCluster is a JetStream cluster of nats-server processes on loopback,
// configured as the quickstart (deploy/quickstart/nats.yaml) and the chart
// deploy it: one cluster, routes to every node, JetStream file storage,
// nats-server's default sync unless SyncAlways.
type NATSCluster struct {
	Nodes []*NATS
	http  []int
}

// StartNATSCluster starts n nodes and waits until JetStream has a meta
// leader (every node's /healthz answers 200).
func StartNATSCluster(bin, dir string, n int, syncAlways bool) (*NATSCluster, error) {
	c := &NATSCluster{}
	ports, cports := make([]int, n), make([]int, n)
	var routes []string
	for i := range n {
		var err error
		if ports[i], err = FreePort(); err != nil {
			return nil, err
		}
		if cports[i], err = FreePort(); err != nil {
			return nil, err
		}
		hp, err := FreePort()
		if err != nil {
			return nil, err
		}
		c.http = append(c.http, hp)
		routes = append(routes, "nats-route://127.0.0.1:"+strconv.Itoa(cports[i]))
	}
	sync := ""
	if syncAlways {
		sync = "\n  sync_interval: always"
	}
	for i := range n {
		name := fmt.Sprintf("n%d", i+1)
		nd := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Join(nd, "js"), 0o755); err != nil {
			c.Stop()
			return nil, fmt.Errorf("rig: nats dir: %w", err)
		}
		conf := fmt.Sprintf("server_name: %s\nlisten: 127.0.0.1:%d\nhttp: 127.0.0.1:%d\nmax_payload: 1MB\n"+
			"jetstream {\n  store_dir: %q%s\n}\ncluster {\n  name: bench\n  listen: 127.0.0.1:%d\n  routes: [%s]\n}\n",
			name, ports[i], c.http[i], filepath.Join(nd, "js"), sync, cports[i], strings.Join(routes, ", "))
		confPath := filepath.Join(nd, "nats.conf")
		if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
			c.Stop()
			return nil, fmt.Errorf("rig: nats config: %w", err)
		}
		p, err := StartProc("nats-"+name, filepath.Join(nd, "nats.log"), nil, bin, "-c", confPath)
		if err != nil {
			c.Stop()
			return nil, err
		}
		c.Nodes = append(c.Nodes, &NATS{Proc: p, Port: ports[i], Dir: nd, SyncAlways: syncAlways})
	}
	if err := c.waitHealthy(60 * time.Second); err != nil {
		c.Stop()
		return nil, err
	}
	return c, nil
}

func (c *NATSCluster) waitHealthy(timeout time.Duration) error {
	hc := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(timeout)
	for i, hp := range c.http {
		for {
			resp, err := hc.Get("http://127.0.0.1:" + strconv.Itoa(hp) + "/healthz")
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					break
				}
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("rig: nats node %d not healthy after %v (see %s)", i+1, timeout, c.Nodes[i].LogPath)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	return nil
}

// URLs is the comma-separated client URL list.
func (c *NATSCluster) URLs() string {
	var u []string
	for _, n := range c.Nodes {
		u = append(u, n.URL())
	}
	return strings.Join(u, ",")
}

// Procs lists the node processes.
func (c *NATSCluster) Procs() []*Proc {
	var ps []*Proc
	for _, n := range c.Nodes {
		ps = append(ps, n.Proc)
	}
	return ps
}

// Stop stops every node.
func (c *NATSCluster) Stop() {
	for _, n := range c.Nodes {
		_ = n.Stop(5 * time.Second)
	}
}

// PeakRSS is the high-water resident set size of pid in KiB (VmHWM), 0 if
// it is gone.
func PeakRSS(pid int) int64 { return procKiB(pid, "status", "VmHWM") }

// RSS is the resident set size of pid in KiB (VmRSS), 0 if it is gone.
func RSS(pid int) int64 {
	if pid <= 0 {
		return 0
	}
	return procKiB(pid, "status", "VmRSS")
}
