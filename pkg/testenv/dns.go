package testenv

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// DNSServer is an authoritative DNS server for tests. It serves records
// parsed from RFC 1035 master-file text on 127.0.0.1, over UDP and TCP on the
// same port.
//
// Answers are authoritative: a name that owns at least one record (or is an
// ancestor of such a name, an "empty non-terminal") exists; every other name
// is NXDOMAIN. A name that exists but lacks the asked type is NOERROR with an
// empty answer (NODATA). CNAMEs are followed inside the loaded data (up to 8
// links). MX answers carry the A/AAAA records of their targets in the
// additional section when the server knows them. Negative answers carry the
// SOA of the closest enclosing zone in the authority section, when the data
// has one. UDP answers larger than the client's buffer (512 bytes, or its
// EDNS0 size) are truncated with the TC bit set, so clients must retry over
// TCP.
type DNSServer struct {
	// Addr is "127.0.0.1:port"; UDP and TCP listen on it.
	Addr string

	t       testing.TB
	queries atomic.Int64

	mu       sync.RWMutex
	records  map[string][]dns.RR // lower-case FQDN owner → records
	exists   map[string]bool     // owners and their ancestors (empty non-terminals)
	servfail map[string]bool     // lower-case FQDN → answer SERVFAIL

	authenticated atomic.Bool // set AD on answers (SetAuthenticated)
}

// SetAuthenticated makes the server set the AD bit on its answers, as a
// DNSSEC-validating resolver does for secure data (DANE tests).
func (s *DNSServer) SetAuthenticated(on bool) { s.authenticated.Store(on) }

// maxCNAMEChain bounds CNAME following inside the server's data.
const maxCNAMEChain = 8

// StartDNS starts a DNS server serving zoneText, which may hold several
// $ORIGIN sections and absolute names. Relative names before any $ORIGIN are
// relative to the root; records without a TTL get 300. The server is shut
// down by t.Cleanup.
func StartDNS(t testing.TB, zoneText string) *DNSServer {
	t.Helper()
	s := &DNSServer{t: t, servfail: map[string]bool{}}
	s.Set(zoneText)

	pc, ln := listenUDPAndTCP(t)
	s.Addr = pc.LocalAddr().String()

	handler := dns.HandlerFunc(s.serveDNS)
	var started sync.WaitGroup
	started.Add(2)
	udpSrv := &dns.Server{PacketConn: pc, Handler: handler, NotifyStartedFunc: started.Done}
	tcpSrv := &dns.Server{Listener: ln, Handler: handler, NotifyStartedFunc: started.Done}
	errc := make(chan error, 2)
	go func() { errc <- udpSrv.ActivateAndServe() }()
	go func() { errc <- tcpSrv.ActivateAndServe() }()

	startedc := make(chan struct{})
	go func() { started.Wait(); close(startedc) }()
	select {
	case <-startedc:
	case err := <-errc:
		t.Fatalf("testenv: start DNS server: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatalf("testenv: DNS server did not start within 10s")
	}

	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = udpSrv.ShutdownContext(ctx)
		_ = tcpSrv.ShutdownContext(ctx)
	})
	return s
}

// listenUDPAndTCP binds a UDP socket on a random free loopback port and a TCP
// listener on the same port, retrying a bounded number of times when the TCP
// port is taken.
func listenUDPAndTCP(t testing.TB) (net.PacketConn, net.Listener) {
	t.Helper()
	var lastErr error
	for range 20 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("testenv: listen UDP: %v", err)
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, ln
		}
		lastErr = err
		pc.Close()
	}
	t.Fatalf("testenv: listen TCP on the UDP port: %v", lastErr)
	return nil, nil
}

// Set replaces all records with those parsed from zoneText. A parse error
// fails the test.
func (s *DNSServer) Set(zoneText string) {
	s.t.Helper()
	records, err := parseZone(zoneText)
	if err != nil {
		s.t.Fatalf("testenv: parse zone: %v", err)
	}
	exists := map[string]bool{}
	for owner := range records {
		for name := owner; name != "."; {
			exists[name] = true
			i, end := dns.NextLabel(name, 0)
			if end {
				break
			}
			name = name[i:]
		}
	}
	s.mu.Lock()
	s.records = records
	s.exists = exists
	s.mu.Unlock()
}

// SetServfail makes queries for name (any type) answer SERVFAIL while on is
// true.
func (s *DNSServer) SetServfail(name string, on bool) {
	key := canonical(name)
	s.mu.Lock()
	defer s.mu.Unlock()
	if on {
		s.servfail[key] = true
	} else {
		delete(s.servfail, key)
	}
}

// Queries returns the number of queries answered so far (UDP and TCP).
func (s *DNSServer) Queries() int {
	return int(s.queries.Load())
}

func parseZone(zoneText string) (map[string][]dns.RR, error) {
	zp := dns.NewZoneParser(strings.NewReader(zoneText), ".", "testzone")
	zp.SetDefaultTTL(300)
	records := map[string][]dns.RR{}
	for rr, ok := zp.Next(); ok; rr, ok = zp.Next() {
		owner := canonical(rr.Header().Name)
		rr.Header().Name = owner
		records[owner] = append(records[owner], rr)
	}
	if err := zp.Err(); err != nil {
		return nil, err
	}
	return records, nil
}

func canonical(name string) string {
	return strings.ToLower(dns.Fqdn(name))
}

func (s *DNSServer) serveDNS(w dns.ResponseWriter, req *dns.Msg) {
	resp := new(dns.Msg)
	resp.SetReply(req)
	resp.Authoritative = true
	resp.RecursionAvailable = req.RecursionDesired
	resp.AuthenticatedData = s.authenticated.Load()

	udpSize := dns.MinMsgSize
	if opt := req.IsEdns0(); opt != nil {
		udpSize = max(int(opt.UDPSize()), dns.MinMsgSize)
		resp.SetEdns0(opt.UDPSize(), false)
	}

	if len(req.Question) == 1 {
		s.answer(resp, req.Question[0])
	} else {
		resp.Rcode = dns.RcodeFormatError
	}

	if _, isUDP := w.RemoteAddr().(*net.UDPAddr); isUDP {
		resp.Truncate(udpSize)
	}
	s.queries.Add(1) // before the reply, so a client that has it sees the count
	_ = w.WriteMsg(resp)
}

// answer fills resp for question q from the loaded records.
func (s *DNSServer) answer(resp *dns.Msg, q dns.Question) {
	s.mu.RLock()
	defer s.mu.RUnlock()

	name := canonical(q.Name)
	if s.servfail[name] {
		resp.Rcode = dns.RcodeServerFailure
		return
	}
	if q.Qclass != dns.ClassINET && q.Qclass != dns.ClassANY {
		resp.Rcode = dns.RcodeRefused
		return
	}

	for range maxCNAMEChain + 1 {
		if s.servfail[name] {
			resp.Rcode = dns.RcodeServerFailure
			return
		}
		if !s.exists[name] {
			resp.Rcode = dns.RcodeNameError
			s.addSOA(resp, name)
			return
		}
		var cname *dns.CNAME
		var matched []dns.RR
		for _, rr := range s.records[name] {
			if rr.Header().Rrtype == q.Qtype || q.Qtype == dns.TypeANY {
				matched = append(matched, dns.Copy(rr))
			}
			if c, ok := rr.(*dns.CNAME); ok {
				cname = c
			}
		}
		if len(matched) > 0 {
			resp.Answer = append(resp.Answer, matched...)
			if q.Qtype == dns.TypeMX {
				s.addMXAdditional(resp, matched)
			}
			return
		}
		if cname == nil {
			s.addSOA(resp, name) // NODATA
			return
		}
		resp.Answer = append(resp.Answer, dns.Copy(cname))
		name = canonical(cname.Target)
	}
	// CNAME chain too long: return what was collected.
}

// addMXAdditional adds the known A and AAAA records of the MX targets.
func (s *DNSServer) addMXAdditional(resp *dns.Msg, answers []dns.RR) {
	for _, rr := range answers {
		mx, ok := rr.(*dns.MX)
		if !ok || mx.Mx == "." {
			continue
		}
		for _, t := range s.records[canonical(mx.Mx)] {
			if typ := t.Header().Rrtype; typ == dns.TypeA || typ == dns.TypeAAAA {
				resp.Extra = append(resp.Extra, dns.Copy(t))
			}
		}
	}
}

// addSOA puts the SOA of the closest enclosing zone of name, if any, into
// the authority section (for negative caching).
func (s *DNSServer) addSOA(resp *dns.Msg, name string) {
	for range 128 { // bounded: a name has at most 127 labels
		for _, rr := range s.records[name] {
			if rr.Header().Rrtype == dns.TypeSOA {
				resp.Ns = append(resp.Ns, dns.Copy(rr))
				return
			}
		}
		i, end := dns.NextLabel(name, 0)
		if end {
			return
		}
		name = name[i:]
	}
}

// StartBlackholeDNS starts a UDP socket on 127.0.0.1 that reads queries and
// never answers (for timeout tests). It returns its "127.0.0.1:port" address
// and is closed by t.Cleanup.
func StartBlackholeDNS(t testing.TB) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testenv: listen UDP: %v", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, dns.MaxMsgSize)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return // closed
			}
		}
	}()
	t.Cleanup(func() {
		pc.Close()
		<-done
	})
	return pc.LocalAddr().String()
}

// String describes the server, for test logs.
func (s *DNSServer) String() string {
	return fmt.Sprintf("testenv.DNSServer(%s)", s.Addr)
}
