package testenv

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
)

const dnsTestZone = `
$ORIGIN example.test.
@        300 IN MX 10 mx1.example.test.
@        300 IN MX 20 mx2.example.test.
mx1      300 IN A 127.0.0.2
mx1      300 IN AAAA ::2
mx2      300 IN A 127.0.0.3
alias    300 IN CNAME mx1
deep.sub 300 IN A 127.0.0.5
nomx.test. 300 IN A 127.0.0.4
nullmx.test. 300 IN MX 0 .
$ORIGIN soa.test.
@        300 IN SOA ns hostmaster 1 3600 600 86400 60
`

func exchange(t *testing.T, addr, network, name string, qtype uint16) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	c := &dns.Client{Net: network, Timeout: 5 * time.Second}
	resp, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("query %s %s over %s: %v", name, dns.TypeToString[qtype], network, err)
	}
	return resp
}

func TestDNSServerAnswers(t *testing.T) {
	s := StartDNS(t, dnsTestZone)
	tests := []struct {
		name    string
		qname   string
		qtype   uint16
		rcode   int
		answers []string // presentation form, sorted as served
		extras  int
		soa     bool
	}{
		{"MX with additional", "example.test.", dns.TypeMX, dns.RcodeSuccess,
			[]string{"example.test.\t300\tIN\tMX\t10 mx1.example.test.", "example.test.\t300\tIN\tMX\t20 mx2.example.test."}, 3, false},
		{"case-insensitive", "EXAMPLE.Test.", dns.TypeMX, dns.RcodeSuccess,
			[]string{"example.test.\t300\tIN\tMX\t10 mx1.example.test.", "example.test.\t300\tIN\tMX\t20 mx2.example.test."}, 3, false},
		{"A", "mx1.example.test.", dns.TypeA, dns.RcodeSuccess, []string{"mx1.example.test.\t300\tIN\tA\t127.0.0.2"}, 0, false},
		{"NODATA", "nomx.test.", dns.TypeMX, dns.RcodeSuccess, nil, 0, false},
		{"empty non-terminal is NODATA", "sub.example.test.", dns.TypeA, dns.RcodeSuccess, nil, 0, false},
		{"NXDOMAIN", "missing.example.test.", dns.TypeA, dns.RcodeNameError, nil, 0, false},
		{"NXDOMAIN outside any zone", "elsewhere.invalid.", dns.TypeMX, dns.RcodeNameError, nil, 0, false},
		{"NXDOMAIN with SOA", "gone.soa.test.", dns.TypeA, dns.RcodeNameError, nil, 0, true},
		{"null MX", "nullmx.test.", dns.TypeMX, dns.RcodeSuccess, []string{"nullmx.test.\t300\tIN\tMX\t0 ."}, 0, false},
		{"CNAME followed", "alias.example.test.", dns.TypeA, dns.RcodeSuccess,
			[]string{"alias.example.test.\t300\tIN\tCNAME\tmx1.example.test.", "mx1.example.test.\t300\tIN\tA\t127.0.0.2"}, 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, network := range []string{"udp", "tcp"} {
				resp := exchange(t, s.Addr, network, tt.qname, tt.qtype)
				if resp.Rcode != tt.rcode || !resp.Authoritative {
					t.Errorf("%s: rcode %s AA=%v, want %s AA", network, dns.RcodeToString[resp.Rcode], resp.Authoritative, dns.RcodeToString[tt.rcode])
				}
				var got []string
				for _, rr := range resp.Answer {
					got = append(got, rr.String())
				}
				if strings.Join(got, "\n") != strings.Join(tt.answers, "\n") {
					t.Errorf("%s: answers\n%s\nwant\n%s", network, strings.Join(got, "\n"), strings.Join(tt.answers, "\n"))
				}
				if len(resp.Extra) != tt.extras {
					t.Errorf("%s: %d additional records, want %d: %v", network, len(resp.Extra), tt.extras, resp.Extra)
				}
				if hasSOA := len(resp.Ns) == 1 && resp.Ns[0].Header().Rrtype == dns.TypeSOA; hasSOA != tt.soa {
					t.Errorf("%s: authority %v, want SOA=%v", network, resp.Ns, tt.soa)
				}
			}
		})
	}
}

func TestDNSServerControls(t *testing.T) {
	s := StartDNS(t, dnsTestZone)
	if got := s.Queries(); got != 0 {
		t.Fatalf("Queries() = %d before any query", got)
	}
	exchange(t, s.Addr, "udp", "example.test.", dns.TypeMX)
	exchange(t, s.Addr, "tcp", "example.test.", dns.TypeMX)
	if got := s.Queries(); got != 2 {
		t.Errorf("Queries() = %d after 2 queries", got)
	}

	s.SetServfail("example.test", true)
	if resp := exchange(t, s.Addr, "udp", "example.test.", dns.TypeMX); resp.Rcode != dns.RcodeServerFailure {
		t.Errorf("with SetServfail: rcode %s", dns.RcodeToString[resp.Rcode])
	}
	if resp := exchange(t, s.Addr, "udp", "mx1.example.test.", dns.TypeA); resp.Rcode != dns.RcodeSuccess {
		t.Errorf("other names with SetServfail: rcode %s", dns.RcodeToString[resp.Rcode])
	}
	s.SetServfail("example.test.", false)
	if resp := exchange(t, s.Addr, "udp", "example.test.", dns.TypeMX); resp.Rcode != dns.RcodeSuccess {
		t.Errorf("after SetServfail off: rcode %s", dns.RcodeToString[resp.Rcode])
	}

	s.Set("new.test. 60 IN A 127.0.0.9\n")
	if resp := exchange(t, s.Addr, "udp", "example.test.", dns.TypeMX); resp.Rcode != dns.RcodeNameError {
		t.Errorf("after Set: old name rcode %s, want NXDOMAIN", dns.RcodeToString[resp.Rcode])
	}
	if resp := exchange(t, s.Addr, "udp", "new.test.", dns.TypeA); len(resp.Answer) != 1 {
		t.Errorf("after Set: new name answers %v", resp.Answer)
	}
}

func TestDNSServerTruncatesUDP(t *testing.T) {
	var zone strings.Builder
	for i := 1; i <= 60; i++ {
		fmt.Fprintf(&zone, "big.test. 300 IN A 127.0.3.%d\n", i)
	}
	s := StartDNS(t, zone.String())
	udp := exchange(t, s.Addr, "udp", "big.test.", dns.TypeA) // no EDNS0: 512 bytes
	if !udp.Truncated || len(udp.Answer) >= 60 {
		t.Errorf("UDP: TC=%v with %d answers, want truncated", udp.Truncated, len(udp.Answer))
	}
	tcp := exchange(t, s.Addr, "tcp", "big.test.", dns.TypeA)
	if tcp.Truncated || len(tcp.Answer) != 60 {
		t.Errorf("TCP: TC=%v with %d answers, want all 60", tcp.Truncated, len(tcp.Answer))
	}
}

func TestBlackholeDNSNeverAnswers(t *testing.T) {
	addr := StartBlackholeDNS(t)
	m := new(dns.Msg)
	m.SetQuestion("example.test.", dns.TypeMX)
	c := &dns.Client{Net: "udp", Timeout: 100 * time.Millisecond}
	if resp, _, err := c.Exchange(m, addr); err == nil {
		t.Fatalf("blackhole answered: %v", resp)
	}
}
