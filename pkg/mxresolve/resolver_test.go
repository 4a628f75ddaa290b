package mxresolve_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mailfwd/mailfwd/pkg/mxresolve"
	"github.com/mailfwd/mailfwd/pkg/testenv"
)

const testZone = `
$ORIGIN example.test.
@        300 IN MX 10 mx1.example.test.
@        300 IN MX 20 mx2.example.test.
mx1      300 IN A 127.0.0.2
mx2      300 IN A 127.0.0.3
nomx.test. 300 IN A 127.0.0.4
nullmx.test. 300 IN MX 0 .

; null MX next to a real MX: the null one is ignored
mixednull.test. 300 IN MX 0 .
mixednull.test. 300 IN MX 10 mx1.example.test.

; IPv6: AAAA listed first, IPv4 must still come first
$ORIGIN v6.test.
@    300 IN MX 10 mx6
mx6  300 IN AAAA ::1
mx6  300 IN A 127.0.0.6
$ORIGIN v6only.test.
@    300 IN AAAA ::1

; the domain is an alias of example.test
alias.test. 300 IN CNAME example.test.

; the MX target is an alias
$ORIGIN cnamemx.test.
@    300 IN MX 10 mail
mail 300 IN CNAME real
real 300 IN A 127.0.0.7

; IDN: bücher.test
$ORIGIN xn--bcher-kva.test.
@    300 IN MX 10 mx
mx   300 IN A 127.0.0.8

; one MX host does not exist, the other does
$ORIGIN partial.test.
@    300 IN MX 10 gone.partial.test.
@    300 IN MX 20 ok
ok   300 IN A 127.0.0.10

; no MX host has an address
noaddr.test. 300 IN MX 10 gone.noaddr.test.

; neither MX nor address records
txtonly.test. 300 IN TXT "hello"

; equal preferences
$ORIGIN eq.test.
@    300 IN MX 5  first
@    300 IN MX 10 a
@    300 IN MX 10 b
@    300 IN MX 10 c
@    300 IN MX 10 d
@    300 IN MX 20 last
first 300 IN A 127.0.1.1
a    300 IN A 127.0.1.2
b    300 IN A 127.0.1.3
c    300 IN A 127.0.1.4
d    300 IN A 127.0.1.5
last 300 IN A 127.0.1.6
`

// newResolver returns a resolver for servers with a short timeout and a
// settable clock.
func newResolver(t *testing.T, cfg mxresolve.Config) (*mxresolve.Resolver, *fakeClock) {
	t.Helper()
	clock := &fakeClock{now: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)}
	if cfg.Timeout == 0 {
		cfg.Timeout = 2 * time.Second
	}
	cfg.Now = clock.Now
	r, err := mxresolve.New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return r, clock
}

type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func addrs(ss ...string) []netip.Addr {
	out := make([]netip.Addr, len(ss))
	for i, s := range ss {
		out[i] = netip.MustParseAddr(s)
	}
	return out
}

func TestLookupMX(t *testing.T) {
	srv := testenv.StartDNS(t, testZone)
	r, _ := newResolver(t, mxresolve.Config{Servers: []string{srv.Addr}})

	tests := []struct {
		name   string
		domain string
		want   []mxresolve.Host
	}{
		{"preference order", "example.test", []mxresolve.Host{
			{Name: "mx1.example.test", Pref: 10, Addrs: addrs("127.0.0.2")},
			{Name: "mx2.example.test", Pref: 20, Addrs: addrs("127.0.0.3")},
		}},
		{"upper case and trailing dot", "EXAMPLE.Test.", []mxresolve.Host{
			{Name: "mx1.example.test", Pref: 10, Addrs: addrs("127.0.0.2")},
			{Name: "mx2.example.test", Pref: 20, Addrs: addrs("127.0.0.3")},
		}},
		{"implicit MX", "nomx.test", []mxresolve.Host{
			{Name: "nomx.test", Pref: 0, Addrs: addrs("127.0.0.4")},
		}},
		{"implicit MX IPv6 only", "v6only.test", []mxresolve.Host{
			{Name: "v6only.test", Pref: 0, Addrs: addrs("::1")},
		}},
		{"null MX beside real MX is ignored", "mixednull.test", []mxresolve.Host{
			{Name: "mx1.example.test", Pref: 10, Addrs: addrs("127.0.0.2")},
		}},
		{"AAAA included, IPv4 first", "v6.test", []mxresolve.Host{
			{Name: "mx6.v6.test", Pref: 10, Addrs: addrs("127.0.0.6", "::1")},
		}},
		{"domain is a CNAME", "alias.test", []mxresolve.Host{
			{Name: "mx1.example.test", Pref: 10, Addrs: addrs("127.0.0.2")},
			{Name: "mx2.example.test", Pref: 20, Addrs: addrs("127.0.0.3")},
		}},
		{"MX target is a CNAME", "cnamemx.test", []mxresolve.Host{
			{Name: "mail.cnamemx.test", Pref: 10, Addrs: addrs("127.0.0.7")},
		}},
		{"IDN in U-labels", "bücher.test", []mxresolve.Host{
			{Name: "mx.xn--bcher-kva.test", Pref: 10, Addrs: addrs("127.0.0.8")},
		}},
		{"IDN in A-labels", "XN--BCHER-KVA.test", []mxresolve.Host{
			{Name: "mx.xn--bcher-kva.test", Pref: 10, Addrs: addrs("127.0.0.8")},
		}},
		{"host without address skipped", "partial.test", []mxresolve.Host{
			{Name: "ok.partial.test", Pref: 20, Addrs: addrs("127.0.0.10")},
		}},
		{"IPv4 address literal", "[127.0.0.9]", []mxresolve.Host{
			{Name: "[127.0.0.9]", Addrs: addrs("127.0.0.9")},
		}},
		{"IPv6 address literal", "[ipv6:0::1]", []mxresolve.Host{
			{Name: "[IPv6:::1]", Addrs: addrs("::1")},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := r.LookupMX(context.Background(), tt.domain)
			if err != nil {
				t.Fatalf("LookupMX(%q): %v", tt.domain, err)
			}
			if !slices.EqualFunc(got, tt.want, hostEqual) {
				t.Errorf("LookupMX(%q) = %v, want %v", tt.domain, got, tt.want)
			}
		})
	}
}

func hostEqual(a, b mxresolve.Host) bool {
	return a.Name == b.Name && a.Pref == b.Pref && slices.Equal(a.Addrs, b.Addrs)
}

func TestLookupMXErrors(t *testing.T) {
	srv := testenv.StartDNS(t, testZone)
	r, _ := newResolver(t, mxresolve.Config{Servers: []string{srv.Addr}})

	tests := []struct {
		name      string
		domain    string
		permanent bool
		enhanced  string
		msg       string // substring of Error.Msg
	}{
		{"null MX", "nullmx.test", true, "5.1.10", "Domain does not accept mail (null MX)"},
		{"NXDOMAIN", "missing.test", true, "5.1.2", "Host unknown (Name server: missing.test: host not found)"},
		{"NXDOMAIN IDN", "nöpe.test", true, "5.1.2", "xn--npe-sna.test: host not found"},
		{"no MX host has an address", "noaddr.test", false, "4.4.3", "no address for any MX host"},
		{"neither MX nor address", "txtonly.test", false, "4.4.3", "no MX and no address records"},
		{"space in name", "exa mple.test", true, "5.1.2", "invalid domain name"},
		{"empty label", "a..test", true, "5.1.2", "invalid domain name"},
		{"underscore", "under_score.test", true, "5.1.2", "invalid domain name"},
		{"empty", "", true, "5.1.2", "invalid domain name"},
		{"label too long", strings.Repeat("a", 64) + ".test", true, "5.1.2", "invalid domain name"},
		{"bad address literal", "[300.1.2.3]", true, "5.1.2", "invalid domain name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hosts, err := r.LookupMX(context.Background(), tt.domain)
			if err == nil {
				t.Fatalf("LookupMX(%q) = %v, want error", tt.domain, hosts)
			}
			var e *mxresolve.Error
			if !errors.As(err, &e) {
				t.Fatalf("LookupMX(%q) error %T %v is not *mxresolve.Error", tt.domain, err, err)
			}
			if e.Permanent != tt.permanent || e.Enhanced != tt.enhanced {
				t.Errorf("LookupMX(%q): Permanent=%v Enhanced=%q, want %v %q (%v)", tt.domain, e.Permanent, e.Enhanced, tt.permanent, tt.enhanced, err)
			}
			if !strings.Contains(e.Msg, tt.msg) {
				t.Errorf("LookupMX(%q): Msg %q does not contain %q", tt.domain, e.Msg, tt.msg)
			}
			if e.Domain != tt.domain {
				t.Errorf("LookupMX(%q): Domain %q", tt.domain, e.Domain)
			}
			if !strings.Contains(err.Error(), tt.enhanced) {
				t.Errorf("Error() %q lacks the enhanced code %s", err.Error(), tt.enhanced)
			}
		})
	}
}

func TestLookupMXServfailIsTemporary(t *testing.T) {
	srv := testenv.StartDNS(t, testZone)
	r, _ := newResolver(t, mxresolve.Config{Servers: []string{srv.Addr}})
	ctx := context.Background()

	srv.SetServfail("example.test", true)
	_, err := r.LookupMX(ctx, "example.test")
	assertTemporary(t, err)
	if !strings.Contains(err.Error(), "SERVFAIL") {
		t.Errorf("error %q does not name SERVFAIL", err)
	}

	// A failure is not cached: once the server recovers, the lookup works.
	srv.SetServfail("example.test", false)
	hosts, err := r.LookupMX(ctx, "example.test")
	if err != nil || len(hosts) != 2 {
		t.Fatalf("after recovery: LookupMX = %v, %v; want 2 hosts", hosts, err)
	}

	// SERVFAIL for the only MX host's address is temporary too.
	srv.SetServfail("real.cnamemx.test", true)
	_, err = r.LookupMX(ctx, "cnamemx.test")
	assertTemporary(t, err)
}

func TestLookupMXTimeoutIsTemporary(t *testing.T) {
	blackhole := testenv.StartBlackholeDNS(t)
	r, _ := newResolver(t, mxresolve.Config{
		Servers:  []string{blackhole},
		Timeout:  100 * time.Millisecond,
		Attempts: 2,
	})
	_, err := r.LookupMX(context.Background(), "example.test")
	assertTemporary(t, err)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("error %v does not wrap a timeout", err)
	}

	_, err = r.LookupHost(context.Background(), "mx1.example.test")
	assertTemporary(t, err)
}

func TestFailoverToNextServer(t *testing.T) {
	blackhole := testenv.StartBlackholeDNS(t)
	srv := testenv.StartDNS(t, testZone)
	r, _ := newResolver(t, mxresolve.Config{
		Servers: []string{blackhole, srv.Addr},
		Timeout: 100 * time.Millisecond,
	})
	hosts, err := r.LookupMX(context.Background(), "example.test")
	if err != nil || len(hosts) != 2 {
		t.Fatalf("LookupMX = %v, %v; want 2 hosts from the second server", hosts, err)
	}

	// A SERVFAIL from the first server moves on to the next one as well.
	bad := testenv.StartDNS(t, testZone)
	bad.SetServfail("nomx.test", true)
	r2, _ := newResolver(t, mxresolve.Config{Servers: []string{bad.Addr, srv.Addr}})
	hosts, err = r2.LookupMX(context.Background(), "nomx.test")
	if err != nil || len(hosts) != 1 || hosts[0].Name != "nomx.test" {
		t.Fatalf("LookupMX(nomx.test) = %v, %v; want the implicit MX", hosts, err)
	}
}

func TestContextEndsLookup(t *testing.T) {
	blackhole := testenv.StartBlackholeDNS(t)
	r, _ := newResolver(t, mxresolve.Config{Servers: []string{blackhole}, Timeout: time.Second, Attempts: 1})

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := r.LookupMX(ctx, "example.test")
	assertTemporary(t, err)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("error %v does not wrap context.DeadlineExceeded", err)
	}

	canceled, cancel2 := context.WithCancel(context.Background())
	cancel2()
	_, err = r.LookupHost(canceled, "mx1.example.test")
	assertTemporary(t, err)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("error %v does not wrap context.Canceled", err)
	}
}

func assertTemporary(t *testing.T, err error) {
	t.Helper()
	var e *mxresolve.Error
	if !errors.As(err, &e) {
		t.Fatalf("error %T %v is not *mxresolve.Error", err, err)
	}
	if e.Permanent || e.Enhanced != "4.4.3" {
		t.Fatalf("error %v: Permanent=%v Enhanced=%q, want temporary 4.4.3", err, e.Permanent, e.Enhanced)
	}
}

func TestCache(t *testing.T) {
	srv := testenv.StartDNS(t, testZone+`
$ORIGIN soa.test.
@ 300 IN SOA ns.soa.test. hostmaster.soa.test. 1 3600 600 86400 60
`)
	r, clock := newResolver(t, mxresolve.Config{Servers: []string{srv.Addr}})
	ctx := context.Background()

	lookup := func(domain string) {
		t.Helper()
		_, _ = r.LookupMX(ctx, domain)
	}
	steps := []struct {
		name    string
		advance time.Duration
		domain  string
		queried bool // whether the server must see new queries
	}{
		{"first lookup", 0, "example.test", true},
		{"within TTL", 299 * time.Second, "example.test", false},
		{"after TTL", 2 * time.Second, "example.test", true},
		{"NXDOMAIN", 0, "missing.test", true},
		{"NXDOMAIN cached (no SOA: min TTL 5s)", 4 * time.Second, "missing.test", false},
		{"NXDOMAIN expired", 2 * time.Second, "missing.test", true},
		{"NXDOMAIN with SOA", 0, "gone.soa.test", true},
		{"NXDOMAIN cached by SOA minimum 60s", 59 * time.Second, "gone.soa.test", false},
		{"NXDOMAIN SOA minimum expired", 2 * time.Second, "gone.soa.test", true},
		{"implicit MX", 0, "nomx.test", true},
		{"implicit MX cached (NODATA and A)", 4 * time.Second, "nomx.test", false},
	}
	for _, st := range steps {
		clock.Advance(st.advance)
		before := srv.Queries()
		lookup(st.domain)
		queried := srv.Queries() > before
		if queried != st.queried {
			t.Errorf("%s: new queries = %v, want %v", st.name, queried, st.queried)
		}
	}

	// Positive address answers are cached too.
	before := srv.Queries()
	for range 3 {
		if _, err := r.LookupHost(ctx, "mx2.example.test"); err != nil {
			t.Fatalf("LookupHost: %v", err)
		}
	}
	if got := srv.Queries() - before; got != 2 { // one A and one AAAA
		t.Errorf("3 LookupHost calls made %d queries, want 2", got)
	}
}

func TestCacheDisabled(t *testing.T) {
	srv := testenv.StartDNS(t, testZone)
	r, _ := newResolver(t, mxresolve.Config{Servers: []string{srv.Addr}, MaxCacheTTL: -1})
	for i := range 2 {
		before := srv.Queries()
		if _, err := r.LookupMX(context.Background(), "example.test"); err != nil {
			t.Fatal(err)
		}
		if srv.Queries() == before {
			t.Errorf("lookup %d was answered from a disabled cache", i)
		}
	}
}

func TestChangedDNSSeenAfterTTL(t *testing.T) {
	srv := testenv.StartDNS(t, "example.test. 60 IN MX 10 mx1.example.test.\nmx1.example.test. 60 IN A 127.0.0.2\n")
	r, clock := newResolver(t, mxresolve.Config{Servers: []string{srv.Addr}})
	ctx := context.Background()
	if hosts, err := r.LookupMX(ctx, "example.test"); err != nil || hosts[0].Name != "mx1.example.test" {
		t.Fatalf("LookupMX = %v, %v", hosts, err)
	}
	srv.Set("example.test. 60 IN MX 10 mx9.example.test.\nmx9.example.test. 60 IN A 127.0.0.9\n")
	if hosts, _ := r.LookupMX(ctx, "example.test"); hosts[0].Name != "mx1.example.test" {
		t.Errorf("within TTL: got %v, want the cached mx1", hosts)
	}
	clock.Advance(61 * time.Second)
	if hosts, err := r.LookupMX(ctx, "example.test"); err != nil || hosts[0].Name != "mx9.example.test" {
		t.Errorf("after TTL: LookupMX = %v, %v; want mx9", hosts, err)
	}
}

func TestAdditionalSectionUsed(t *testing.T) {
	srv := testenv.StartDNS(t, testZone)
	r, _ := newResolver(t, mxresolve.Config{Servers: []string{srv.Addr}})
	hosts, err := r.LookupMX(context.Background(), "example.test")
	if err != nil || len(hosts) != 2 || len(hosts[0].Addrs) == 0 {
		t.Fatalf("LookupMX = %v, %v", hosts, err)
	}
	if q := srv.Queries(); q != 1 {
		t.Errorf("server answered %d queries, want 1 (addresses from the additional section)", q)
	}

	// Without additional data (the MX target is an alias) the addresses are
	// queried: MX, then A and AAAA of the target.
	before := srv.Queries()
	if _, err := r.LookupMX(context.Background(), "cnamemx.test"); err != nil {
		t.Fatal(err)
	}
	if q := srv.Queries() - before; q != 3 {
		t.Errorf("server answered %d queries for cnamemx.test, want 3", q)
	}
}

func TestEqualPreferencesShuffled(t *testing.T) {
	srv := testenv.StartDNS(t, testZone)
	r, _ := newResolver(t, mxresolve.Config{Servers: []string{srv.Addr}})
	middle := []string{"a.eq.test", "b.eq.test", "c.eq.test", "d.eq.test"}
	orders := map[string]bool{}
	for range 50 {
		hosts, err := r.LookupMX(context.Background(), "eq.test")
		if err != nil {
			t.Fatal(err)
		}
		names := make([]string, len(hosts))
		for i, h := range hosts {
			names[i] = h.Name
		}
		if len(names) != 6 || names[0] != "first.eq.test" || names[5] != "last.eq.test" {
			t.Fatalf("order %v: want first.eq.test, the four pref-10 hosts, last.eq.test", names)
		}
		got := slices.Clone(names[1:5])
		slices.Sort(got)
		if !slices.Equal(got, middle) {
			t.Fatalf("pref-10 hosts %v, want the set %v", names[1:5], middle)
		}
		orders[strings.Join(names, ",")] = true
	}
	// 50 draws from 24 orders all equal has probability 24^-49.
	if len(orders) < 2 {
		t.Errorf("equal preferences were never shuffled: %v", orders)
	}
}

func TestConcurrentLookupsShareQueries(t *testing.T) {
	srv := testenv.StartDNS(t, testZone)
	r, _ := newResolver(t, mxresolve.Config{Servers: []string{srv.Addr}})
	var wg sync.WaitGroup
	errs := make([]error, 20)
	for i := range errs {
		wg.Go(func() { _, errs[i] = r.LookupMX(context.Background(), "example.test") })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	if q := srv.Queries(); q != 1 {
		t.Errorf("20 concurrent lookups made %d queries, want 1", q)
	}
}

func TestLookupHost(t *testing.T) {
	var big strings.Builder
	var bigWant []netip.Addr
	for i := 1; i <= 100; i++ { // too large for one UDP answer: needs TCP
		fmt.Fprintf(&big, "big.test. 300 IN A 127.0.2.%d\n", i)
		bigWant = append(bigWant, netip.AddrFrom4([4]byte{127, 0, 2, byte(i)}))
	}
	srv := testenv.StartDNS(t, testZone+big.String())
	r, _ := newResolver(t, mxresolve.Config{Servers: []string{srv.Addr}})

	tests := []struct {
		name string
		host string
		want []netip.Addr
	}{
		{"A", "mx1.example.test", addrs("127.0.0.2")},
		{"A and AAAA, IPv4 first", "mx6.v6.test", addrs("127.0.0.6", "::1")},
		{"CNAME", "mail.cnamemx.test", addrs("127.0.0.7")},
		{"IDN", "MX.bücher.test", addrs("127.0.0.8")},
		{"IP address", "192.0.2.1", addrs("192.0.2.1")},
		{"address literal", "[192.0.2.1]", addrs("192.0.2.1")},
		{"truncated UDP answer retried over TCP", "big.test", bigWant},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := r.LookupHost(context.Background(), tt.host)
			if err != nil {
				t.Fatalf("LookupHost(%q): %v", tt.host, err)
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("LookupHost(%q) = %v, want %v", tt.host, got, tt.want)
			}
		})
	}

	_, err := r.LookupHost(context.Background(), "missing.test")
	var e *mxresolve.Error
	if !errors.As(err, &e) || !e.Permanent || e.Enhanced != "5.1.2" {
		t.Errorf("LookupHost(missing.test) = %v, want permanent 5.1.2", err)
	}
	_, err = r.LookupHost(context.Background(), "txtonly.test") // exists, no addresses
	assertTemporary(t, err)
	srv.SetServfail("mx2.example.test", true)
	_, err = r.LookupHost(context.Background(), "mx2.example.test")
	assertTemporary(t, err)
}
