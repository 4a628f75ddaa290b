package rig

import (
	"net"
	"sync"
	"time"
)

// LatencyProxy forwards TCP connections from Addr to an upstream address,
// delaying every byte by a fixed time in each direction (a WAN round trip
// of twice that on loopback), without limiting bandwidth: each chunk read
// is written once its time has come, chunks in order.
type LatencyProxy struct {
	Addr string
	ln   net.Listener
	wg   sync.WaitGroup

	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

// StartLatencyProxy listens on a free loopback port.
func StartLatencyProxy(upstream string, oneWay time.Duration) (*LatencyProxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &LatencyProxy{Addr: ln.Addr().String(), ln: ln, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.wg.Add(1)
			go func() {
				defer p.wg.Done()
				p.serve(c, upstream, oneWay)
			}()
		}
	}()
	return p, nil
}

func (p *LatencyProxy) track(c net.Conn, add bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if add {
		p.conns[c] = struct{}{}
	} else {
		delete(p.conns, c)
	}
}

func (p *LatencyProxy) serve(down net.Conn, upstream string, oneWay time.Duration) {
	p.track(down, true)
	defer p.track(down, false)
	defer down.Close()
	// The connect itself costs a round trip, as a TCP handshake would.
	time.Sleep(2 * oneWay)
	up, err := net.Dial("tcp", upstream)
	if err != nil {
		return
	}
	p.track(up, true)
	defer p.track(up, false)
	defer up.Close()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); delayCopy(up, down, oneWay) }()
	go func() { defer wg.Done(); delayCopy(down, up, oneWay) }()
	wg.Wait()
}

type chunk struct {
	b   []byte
	due time.Time
}

// delayCopy copies src to dst, each chunk written delay after it was read;
// EOF or an error on either side closes both directions.
func delayCopy(dst, src net.Conn, delay time.Duration) {
	ch := make(chan chunk, 4096)
	go func() {
		defer close(ch)
		for {
			b := make([]byte, 32<<10)
			n, err := src.Read(b)
			if n > 0 {
				ch <- chunk{b[:n], time.Now().Add(delay)}
			}
			if err != nil {
				return
			}
		}
	}()
	for c := range ch {
		if d := time.Until(c.due); d > 0 {
			time.Sleep(d)
		}
		if _, err := dst.Write(c.b); err != nil {
			break
		}
	}
	// Half-close so the other side sees EOF only after the delayed bytes.
	if tc, ok := dst.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	} else {
		_ = dst.Close()
	}
	_ = src.Close()
	for range ch { // let the reader end
	}
}

// Close stops accepting and closes every forwarded connection.
func (p *LatencyProxy) Close() {
	p.ln.Close()
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}
