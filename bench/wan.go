package main

// The WAN rows: each relay's destination sits behind a latency proxy (25 ms
// each way by default), both relays capped at 4 connections to it, at equal
// durability (Postfix vs mailfwd-file-sync). The destination is a go-smtp
// sink (pkg/sink) offering PIPELINING only, or PIPELINING and CHUNKING.
// Messages are injected by this program (a new client connection per
// message) with a unique Message-ID, so the delivery latency of each message
// (250 at the relay → 250 at the destination) is known.

import (
	"bytes"
	"context"
	"fmt"
	"math/rand"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailfwd/mailfwd/bench/rig"
	"github.com/mailfwd/mailfwd/pkg/sink"
)

// wanConnCap is the connection cap to the destination of both relays.
const wanConnCap = 4

// wanDest is a sink behind a latency proxy.
type wanDest struct {
	sink  *sink.Server
	proxy *rig.LatencyProxy
	ln    net.Listener
}

func (d *wanDest) close() {
	if d.proxy != nil {
		d.proxy.Close()
	}
	_ = d.sink.Close()
}

// Addr is where the relay sends to: the proxy, or the sink without one.
func (d *wanDest) Addr() string {
	if d.proxy != nil {
		return d.proxy.Addr
	}
	return d.ln.Addr().String()
}

// startWANDest starts a sink (hiding CHUNKING unless chunking) behind a
// proxy adding oneWay in each direction (none when oneWay is 0). cfg may steer the sink's replies.
func startWANDest(chunking bool, oneWay time.Duration, cfg sink.Config) (*wanDest, error) {
	s := sink.New(cfg)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	var l net.Listener = ln
	if !chunking {
		l = hideListener{ln, []byte("250-CHUNKING\r\n")}
	}
	go func() { _ = s.Serve(l) }()
	if oneWay <= 0 {
		return &wanDest{sink: s, ln: ln}, nil
	}
	p, err := rig.StartLatencyProxy(ln.Addr().String(), oneWay)
	if err != nil {
		_ = s.Close()
		return nil, err
	}
	return &wanDest{sink: s, proxy: p, ln: ln}, nil
}

// hideListener removes an EHLO keyword line from what the server writes
// (go-smtp writes a reply in one write).
type hideListener struct {
	net.Listener
	line []byte
}

func (l hideListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return hideConn{c, l.line}, nil
}

type hideConn struct {
	net.Conn
	line []byte
}

func (c hideConn) Write(p []byte) (int, error) {
	if !bytes.Contains(p, c.line) {
		return c.Conn.Write(p)
	}
	if _, err := c.Conn.Write(bytes.ReplaceAll(p, c.line, nil)); err != nil {
		return 0, err
	}
	return len(p), nil
}

// wanRelay is one relay under test, sending to dest.
type wanRelay struct {
	name, durability string
	addr             string
	cpu              func() time.Duration
	mem              func() int64
	close            func()
}

// startWANRelay starts postfix or mailfwd-file-sync relaying to route with
// the connection cap; extra adds Postfix main.cf lines / worker flags.
func startWANRelay(tools rig.Tools, work, name, route string, postfixExtra string, workerArgs []string) (*wanRelay, error) {
	dir := filepath.Join(work, fmt.Sprintf("%s-%d", name, time.Now().UnixNano()))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	switch name {
	case "postfix":
		extra := fmt.Sprintf("default_destination_concurrency_limit = %d\nsmtp_destination_concurrency_limit = %d\n", wanConnCap, wanConnCap) + postfixExtra
		pf, err := rig.StartPostfixConf(tools.Postfix, dir, route, extra)
		if err != nil {
			return nil, err
		}
		return &wanRelay{name: name, durability: "fsync queue file before 250", addr: pf.SMTPAddr, cpu: pf.CPU,
			mem:   func() int64 { return rig.TreePSS(pf.MasterPid()) },
			close: pf.Stop}, nil
	case "mailfwd-file-sync":
		args := append([]string{"--max-conns-per-host", strconv.Itoa(wanConnCap)}, workerArgs...)
		m, err := rig.StartMailfwd(tools, rig.MailfwdConfig{Dir: dir, Route: route, Blob: "file", LocalStore: true, WorkerArgs: args})
		if err != nil {
			return nil, err
		}
		return &wanRelay{name: name, durability: "on disk before the 250 (--nats-store-dir)", addr: m.SMTPAddr, cpu: m.CPU,
			mem:   func() int64 { return rig.TreePSS(procPids(m.Procs())...) },
			close: m.Close}, nil
	}
	return nil, fmt.Errorf("wan: unknown system %q", name)
}

func procPids(ps []*rig.Proc) []int {
	var out []int
	for _, p := range ps {
		if p != nil && p.Pid() > 0 {
			out = append(out, p.Pid())
		}
	}
	return out
}

// injected records when the relay answered 250 to each message.
type injected struct {
	mu sync.Mutex
	at map[string]time.Time // Message-ID → 250 at the relay
}

// inject sends n messages to addr over sessions concurrent clients, a new
// connection per message; rcpts(i) gives message i's recipients. It returns
// the first error.
func inject(addr string, n, sessions, sizeKiB int, tag string, rcpts func(i int) []string, inj *injected) error {
	body := bytes.Repeat([]byte("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.,\r\n"), sizeKiB*1024/66+1)
	var next atomic.Int64
	var firstErr error
	var errOnce sync.Once
	var wg sync.WaitGroup
	for range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				id := fmt.Sprintf("<%s-%d@bench.test>", tag, i)
				msg := fmt.Sprintf("From: sender@client.bench.test\r\nTo: rcpt@dest.bench.test\r\nMessage-ID: %s\r\nSubject: bench %d\r\n\r\n", id, i)
				data := append([]byte(msg), body[:sizeKiB*1024]...)
				if err := sendOne(addr, rcpts(i), data); err != nil {
					errOnce.Do(func() { firstErr = fmt.Errorf("message %d: %w", i, err) })
					return
				}
				inj.mu.Lock()
				inj.at[id] = time.Now()
				inj.mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return firstErr
}

func sendOne(addr string, rcpts []string, data []byte) error {
	c, err := smtp.Dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Hello("client.bench.test"); err != nil {
		return err
	}
	if err := c.SendMail("sender@client.bench.test", rcpts, bytes.NewReader(data)); err != nil {
		return err
	}
	return c.Quit()
}

// messageID returns the Message-ID field of a message's header.
func messageID(data []byte) string {
	i := bytes.Index(data, []byte("\r\nMessage-ID: "))
	if i < 0 {
		return ""
	}
	rest := data[i+len("\r\nMessage-ID: "):]
	if j := bytes.Index(rest, []byte("\r\n")); j >= 0 {
		return string(rest[:j])
	}
	return ""
}

// wanSample is one WAN run.
type wanSample struct {
	e2e      time.Duration
	p50, p99 time.Duration
	cpu      time.Duration
	memKiB   int64
	err      error
}

func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	return d[min(len(d)-1, int(float64(len(d))*p))]
}

// measureWAN injects n messages and waits until dest has exactly n more.
func measureWAN(r *wanRelay, dest *wanDest, sizeKiB, rcpts, n int, tag string) wanSample {
	before := dest.sink.Count()
	cpu0 := r.cpu()
	inj := &injected{at: map[string]time.Time{}}
	peak := sampleRSS(r.mem)
	start := time.Now()
	err := inject(r.addr, n, 10, sizeKiB, tag, func(i int) []string {
		out := make([]string, rcpts)
		for k := range out {
			out[k] = fmt.Sprintf("r%d@dest.bench.test", k)
		}
		return out
	}, inj)
	if err != nil {
		peak()
		return wanSample{err: err}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute+time.Duration(n)*100*time.Millisecond)
	defer cancel()
	err = dest.sink.WaitCount(ctx, before+n)
	smp := wanSample{memKiB: peak(), err: err}
	smp.cpu = settleCPU(r.cpu) - cpu0
	msgs := dest.sink.Messages()
	if smp.err == nil && len(msgs) != before+n {
		smp.err = fmt.Errorf("destination got %d new transactions, want exactly %d", len(msgs)-before, n)
	}
	var lat []time.Duration
	var last time.Time
	for _, m := range msgs[before:] {
		at, ok := inj.at[messageID(m.Data)]
		if !ok {
			if smp.err == nil {
				smp.err = fmt.Errorf("destination got a message not injected in this run (%q)", messageID(m.Data))
			}
			continue
		}
		lat = append(lat, m.At.Sub(at))
		if m.At.After(last) {
			last = m.At
		}
	}
	smp.e2e = last.Sub(start)
	smp.p50, smp.p99 = percentile(lat, 0.50), percentile(lat, 0.99)
	return smp
}

// wan runs the WAN section.
func wan(ctx context.Context, tools rig.Tools, work string, o options) error {
	oneWay := time.Duration(envInt("BENCH_WAN_DELAY_MS", 25)) * time.Millisecond
	n := envInt("BENCH_WAN_N", map[bool]int{true: 100, false: 300}[o.quick])
	type wcell struct{ size, rcpts int }
	cells := []wcell{{1, 1}, {10, 1}, {1, 10}, {10, 10}}
	if o.quick {
		cells = []wcell{{1, 1}, {1, 10}}
	}
	if sizes := envInts("BENCH_SIZES", nil); len(sizes) > 0 {
		cells = slices.DeleteFunc(cells, func(c wcell) bool { return !slices.Contains(sizes, c.size) })
	}
	if rc := envInts("BENCH_WAN_RCPTS", nil); len(rc) > 0 {
		cells = slices.DeleteFunc(cells, func(c wcell) bool { return !slices.Contains(rc, c.rcpts) })
	}
	names := []string{"postfix", "mailfwd-file-sync"}
	fmt.Printf("\n== WAN: destination behind a %v-each-way latency proxy, %d connections to it per relay, N=%d per run, %d runs, load average now %s\n",
		oneWay, wanConnCap, n, o.runs, loadavg())
	fmt.Printf("%-10s %-18s %-7s %-6s %12s %10s %10s %10s %12s %10s\n", "dest", "system", "size", "rcpts", "msg/s/conn", "msg/s", "p50", "p99", "cpu ms/msg", "PSS MiB")
	for _, chunking := range []bool{false, true} {
		kind := map[bool]string{false: "PIPELINING", true: "+CHUNKING"}[chunking]
		var relays []*wanRelay
		var dests []*wanDest
		cleanup := func() {
			for _, r := range relays {
				r.close()
			}
			for _, d := range dests {
				d.close()
			}
		}
		for _, name := range names {
			d, err := startWANDest(chunking, oneWay, sink.Config{Hostname: "dest.bench.test"})
			if err != nil {
				cleanup()
				return err
			}
			dests = append(dests, d)
			r, err := startWANRelay(tools, work, name, d.Addr(), "", nil)
			if err != nil {
				cleanup()
				return fmt.Errorf("start %s: %w", name, err)
			}
			relays = append(relays, r)
		}
		for ci, c := range cells {
			res := map[string][]wanSample{}
			for run := range o.runs {
				order := rand.Perm(len(relays))
				for _, k := range order {
					if ctx.Err() != nil {
						cleanup()
						return ctx.Err()
					}
					smp := measureWAN(relays[k], dests[k], c.size, c.rcpts, n, fmt.Sprintf("w%d-%d-%d-%d", btoi(chunking), ci, run, k))
					if smp.err != nil {
						fmt.Printf("  %s %s %dKiB %dr run %d: %v\n", kind, relays[k].name, c.size, c.rcpts, run+1, smp.err)
					}
					res[relays[k].name] = append(res[relays[k].name], smp)
				}
			}
			for _, r := range relays {
				m := medianWAN(res[r.name])
				rate := float64(n) / m.e2e.Seconds()
				fmt.Printf("%-10s %-18s %-7s %-6d %12.2f %10.1f %10s %10s %12.2f %10.1f\n", kind, r.name, strconv.Itoa(c.size)+"KiB", c.rcpts,
					rate/wanConnCap, rate, m.p50.Round(time.Millisecond), m.p99.Round(time.Millisecond),
					float64(m.cpu.Microseconds())/1000/float64(n), float64(m.memKiB)/1024)
			}
		}
		cleanup()
	}
	return nil
}

// medianWAN picks the run with the median end-to-end time (failed runs
// last).
func medianWAN(s []wanSample) wanSample {
	ok := slices.DeleteFunc(slices.Clone(s), func(x wanSample) bool { return x.err != nil })
	if len(ok) == 0 {
		return wanSample{e2e: time.Duration(1<<62 - 1)}
	}
	slices.SortFunc(ok, func(a, b wanSample) int { return int(a.e2e - b.e2e) })
	return ok[len(ok)/2]
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
