package route

import (
	"context"
	"errors"
	"net/netip"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mailfwd/mailfwd/pkg/delivery"
	"github.com/mailfwd/mailfwd/pkg/mxresolve"
	"github.com/mailfwd/mailfwd/pkg/testenv"
	"github.com/mailfwd/mailfwd/pkg/tlspolicy"
)

func TestParseRHS(t *testing.T) {
	tests := []struct {
		name string
		rhs  string
		want Entry
	}{
		{"two literal hosts in order", "smtp:[10.1.1.1]:[10.1.1.2]", Entry{Hosts: []Host{
			{Name: "10.1.1.1", Literal: true}, {Name: "10.1.1.2", Literal: true},
		}}},
		{"esmtp host name", "esmtp:relay.example.com", Entry{Hosts: []Host{{Name: "relay.example.com"}}}},
		{"mailer omitted, literal with port", "[127.0.0.1]:2526", Entry{Hosts: []Host{
			{Name: "127.0.0.1", Literal: true, Port: 2526},
		}}},
		{"port on first host only", "smtp:[10.1.1.1]:2525:[10.1.1.2]", Entry{Hosts: []Host{
			{Name: "10.1.1.1", Literal: true, Port: 2525}, {Name: "10.1.1.2", Literal: true},
		}}},
		{"port on both hosts", "smtp:[10.1.1.1]:2525:[10.1.1.2]:2526", Entry{Hosts: []Host{
			{Name: "10.1.1.1", Literal: true, Port: 2525}, {Name: "10.1.1.2", Literal: true, Port: 2526},
		}}},
		{"bracketed host name", "smtp:[relay.example.com]", Entry{Hosts: []Host{
			{Name: "relay.example.com", Literal: true},
		}}},
		{"host name with port", "relay:relay.example.com:587", Entry{Hosts: []Host{
			{Name: "relay.example.com", Port: 587},
		}}},
		{"IPv6 literal", "smtp:[IPv6:2001:db8::1]:2525", Entry{Hosts: []Host{
			{Name: "2001:db8::1", Literal: true, Port: 2525},
		}}},
		{"bare IPv6 in brackets", "smtp8:[2001:db8::2]", Entry{Hosts: []Host{
			{Name: "2001:db8::2", Literal: true},
		}}},
		{"mailer omitted, bare host", "relay.example.com", Entry{Hosts: []Host{{Name: "relay.example.com"}}}},
		{"dsmtp mailer", "dsmtp:relay.example.com", Entry{Hosts: []Host{{Name: "relay.example.com"}}}},
		{"surrounding space", "  smtp:[10.1.1.1]  ", Entry{Hosts: []Host{{Name: "10.1.1.1", Literal: true}}}},
		{"localhost", "smtp:localhost:2525", Entry{Hosts: []Host{{Name: "localhost", Port: 2525}}}},
		{"permanent error", "error:5.1.1:User unknown", Entry{Error: &Error{
			Permanent: true, Enhanced: "5.1.1", Msg: "User unknown",
		}}},
		{"temporary error", "error:4.3.0:try later", Entry{Error: &Error{
			Enhanced: "4.3.0", Msg: "try later",
		}}},
		{"error with quoted text", `error:5.7.1:"Relaying denied"`, Entry{Error: &Error{
			Permanent: true, Enhanced: "5.7.1", Msg: "Relaying denied",
		}}},
		{"error without text", "error:5.1.2", Entry{Error: &Error{
			Permanent: true, Enhanced: "5.1.2", Msg: "Routing error",
		}}},
		{"error with three-digit parts", "error:5.123.456:odd", Entry{Error: &Error{
			Permanent: true, Enhanced: "5.123.456", Msg: "odd",
		}}},
		{"error text with colon", "error:5.1.1:No such user: here", Entry{Error: &Error{
			Permanent: true, Enhanced: "5.1.1", Msg: "No such user: here",
		}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseRHS(tt.rhs)
			if err != nil {
				t.Fatalf("ParseRHS(%q): %v", tt.rhs, err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ParseRHS(%q) = %s, want %s", tt.rhs, fmtEntry(got), fmtEntry(tt.want))
			}
		})
	}
}

func fmtEntry(e Entry) string {
	if e.Error != nil {
		return "error{" + strings.Join([]string{boolStr(e.Error.Permanent), e.Error.Enhanced, e.Error.Msg}, ",") + "}"
	}
	var b strings.Builder
	for _, h := range e.Hosts {
		b.WriteString(" " + h.Name)
		if h.Literal {
			b.WriteString("(literal)")
		}
		if h.Port != 0 {
			b.WriteString(":" + strconv.Itoa(int(h.Port)))
		}
	}
	return "hosts{" + b.String() + " }"
}

func boolStr(b bool) string {
	if b {
		return "permanent"
	}
	return "temporary"
}

func TestParseRHSErrors(t *testing.T) {
	tests := []struct {
		name string
		rhs  string
		msg  string // substring of the error
	}{
		{"empty", "", "empty host"},
		{"unknown mailer", "uucp:relay.example.com", "unknown mailer"},
		{"local mailer", "local:user", "unknown mailer"},
		{"host name and port without mailer", "relay.example.com:25", "unknown mailer"},
		{"port first", "smtp:2525:[10.1.1.1]", "misplaced port"},
		{"port only", "smtp:2525", "misplaced port"},
		{"two ports in a row", "smtp:[10.1.1.1]:25:26", "misplaced port"},
		{"port zero", "smtp:[10.1.1.1]:0", "misplaced port"},
		{"empty host", "smtp:", "empty host"},
		{"empty host between", "smtp:[10.1.1.1]::[10.1.1.2]", "empty host"},
		{"trailing colon", "smtp:[10.1.1.1]:", "empty host"},
		{"empty brackets", "smtp:[]", "bad host"},
		{"unbalanced bracket", "smtp:[10.1.1.1", "unbalanced"},
		{"dotless host", "smtp:relay", "bad host"},
		{"space in host", "smtp:relay .example.com", "bad host"},
		{"port out of range", "smtp:[10.1.1.1]:70000", "bad host"},
		{"error without status", "error::User unknown", "status"},
		{"error with 2xx status", "error:2.0.0:fine", "status"},
		{"error with text as status", "error:User unknown", "status"},
		{"bare error", "error:", "status"},
		{"error with class only", "error:5:gone", "status"},
		{"error with two parts", "error:5.1:gone", "status"},
		{"error with four parts", "error:5.1.1.1:gone", "status"},
		{"error with letters", "error:5.x.1:gone", "status"},
		{"error with long detail", "error:5.1.1234:gone", "status"},
		{"error with empty detail", "error:4.3.:later", "status"},
		{"error with SMTP code as status", "error:550:gone", "status"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseRHS(tt.rhs)
			if err == nil {
				t.Fatalf("ParseRHS(%q) = %s, want error", tt.rhs, fmtEntry(got))
			}
			if !strings.Contains(err.Error(), tt.msg) {
				t.Errorf("ParseRHS(%q) error %q, want it to contain %q", tt.rhs, err, tt.msg)
			}
			if got.Hosts != nil || got.Error != nil {
				t.Errorf("ParseRHS(%q) returned %s with the error, want a zero Entry", tt.rhs, fmtEntry(got))
			}
		})
	}
}

func TestTableAddErrors(t *testing.T) {
	tests := []struct {
		key, rhs string
		msg      string
	}{
		{"", "smtp:[10.1.1.1]", "empty domain"},
		{"   ", "smtp:[10.1.1.1]", "empty domain"},
		{"exa mple.com", "smtp:[10.1.1.1]", "exa mple.com"},
		{"example", "smtp:[10.1.1.1]", "example"},
		{"example.com", "uucp:host.example", "route example.com: unknown mailer"},
		{".example.com", "smtp:", "route .example.com: empty host"},
	}
	for _, tt := range tests {
		tab := NewTable()
		err := tab.Add(tt.key, tt.rhs)
		if err == nil {
			t.Errorf("Add(%q, %q) succeeded, want error", tt.key, tt.rhs)
			continue
		}
		if !strings.Contains(err.Error(), tt.msg) {
			t.Errorf("Add(%q, %q) error %q, want it to contain %q", tt.key, tt.rhs, err, tt.msg)
		}
		if tab.Len() != 0 {
			t.Errorf("Add(%q, %q) failed but the table has %d entries", tt.key, tt.rhs, tab.Len())
		}
	}
}

func TestTableLookup(t *testing.T) {
	tab := NewTable()
	addRoutes(t, tab, map[string]string{
		"example.com":       "smtp:[10.0.0.1]",
		".example.com":      "smtp:[10.0.0.2]",
		".sub.example.com":  "smtp:[10.0.0.3]",
		".":                 "smtp:[10.0.0.4]",
		"Upper.Example.ORG": "smtp:[10.0.0.5]",
		"dot.example.net.":  "smtp:[10.0.0.6]",
		"bücher.example":    "smtp:[10.0.0.7]",
		"localhost":         "smtp:[10.0.0.8]",
	})
	if tab.Len() != 8 {
		t.Errorf("Len() = %d, want 8", tab.Len())
	}
	tests := []struct {
		domain string
		want   string // the literal host of the matching entry
	}{
		{"example.com", "10.0.0.1"},                // exact beats ".example.com" and "."
		{"EXAMPLE.COM.", "10.0.0.1"},               // case and trailing dot
		{"mail.example.com", "10.0.0.2"},           // ".parent"
		{"a.b.c.example.com", "10.0.0.2"},          // any depth
		{"sub.example.com", "10.0.0.2"},            // ".sub.example.com" does not match itself
		{"x.sub.example.com", "10.0.0.3"},          // longest ".parent" wins
		{"other.org", "10.0.0.4"},                  // "." catches the rest
		{"notexample.com", "10.0.0.4"},             // not a subdomain of example.com
		{"upper.example.org", "10.0.0.5"},          // keys are case-insensitive
		{"dot.example.net", "10.0.0.6"},            // key with a trailing dot
		{"xn--bcher-kva.example", "10.0.0.7"},      // IDN key matches its A-labels
		{"localhost", "10.0.0.8"},                  // dotless localhost
		{"mail.xn--bcher-kva.example", "10.0.0.4"}, // exact key is not a parent
		{"example.com.evil.test", "10.0.0.4"},      // suffix must be label-aligned
	}
	for _, tt := range tests {
		e, ok := tab.Lookup(tt.domain)
		if !ok {
			t.Errorf("Lookup(%q) found nothing, want %s", tt.domain, tt.want)
			continue
		}
		if len(e.Hosts) != 1 || e.Hosts[0].Name != tt.want {
			t.Errorf("Lookup(%q) = %s, want host %s", tt.domain, fmtEntry(e), tt.want)
		}
	}
}

func TestTableLookupWithoutDefault(t *testing.T) {
	tab := NewTable()
	if err := tab.Add(".example.com", "esmtp:relay.example.net"); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"example.com", "example.org", "com", ""} {
		if e, ok := tab.Lookup(d); ok {
			t.Errorf("Lookup(%q) = %s, want no entry", d, fmtEntry(e))
		}
	}
	if e, ok := tab.Lookup("www.example.com"); !ok || e.Hosts[0].Name != "relay.example.net" {
		t.Errorf("Lookup(www.example.com) = %s, %v; want relay.example.net", fmtEntry(e), ok)
	}

	var nilTable *Table
	if _, ok := nilTable.Lookup("example.com"); ok {
		t.Error("nil Table found an entry")
	}
}

func TestTableAddReplaces(t *testing.T) {
	tab := NewTable()
	if err := tab.Add("example.com", "smtp:[10.0.0.1]"); err != nil {
		t.Fatal(err)
	}
	if err := tab.Add("EXAMPLE.com", "error:5.1.1:gone"); err != nil {
		t.Fatal(err)
	}
	if tab.Len() != 1 {
		t.Errorf("Len() = %d, want 1", tab.Len())
	}
	e, ok := tab.Lookup("example.com")
	if !ok || e.Error == nil || e.Error.Msg != "gone" {
		t.Errorf("Lookup(example.com) = %s, %v; want the later error entry", fmtEntry(e), ok)
	}
}

const routeZone = `
$ORIGIN example.test.
@    MX 20 mx2
@    MX 10 mx1
@    MX 30 mx3
mx1  A 127.0.0.2
mx2  A 127.0.0.3
mx3  A 127.0.0.4
mx3  AAAA ::1

$ORIGIN relay.test.
@    MX 10 in
in   A 127.0.0.20
in   A 127.0.0.21

; smarthost.test has an MX and an address of its own: [smarthost.test]
; must use the address, smarthost.test the MX.
$ORIGIN smarthost.test.
@    MX 10 mx1.example.test.
@    A 127.0.0.30

nullmx.test. MX 0 .
noaddr.test. MX 10 nowhere.noaddr.test.
noaddr.test. TXT "no addresses"
`

func newRouter(t *testing.T, zone string) (*Router, *testenv.DNSServer) {
	t.Helper()
	srv := testenv.StartDNS(t, zone)
	res, err := mxresolve.New(mxresolve.Config{Servers: []string{srv.Addr}, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatalf("mxresolve.New: %v", err)
	}
	return &Router{Table: NewTable(), Resolver: res}, srv
}

// bare drops what the TLS policy sees of each hop (TestRouterTLSPolicyHop
// checks it), for the tables that compare where mail goes.
func bare(hops []delivery.Hop) []delivery.Hop {
	out := make([]delivery.Hop, len(hops))
	for i, h := range hops {
		out[i] = delivery.Hop{Name: h.Name, Addr: h.Addr}
	}
	return out
}

func hop(name, addrPort string) delivery.Hop {
	return delivery.Hop{Name: name, Addr: netip.MustParseAddrPort(addrPort)}
}

// addRoutes adds mailertable entries (key: right-hand side) to tab.
func addRoutes(t *testing.T, tab *Table, routes map[string]string) {
	t.Helper()
	for key, rhs := range routes {
		if err := tab.Add(key, rhs); err != nil {
			t.Fatalf("Add(%q, %q): %v", key, rhs, err)
		}
	}
}

// inRelay is in.relay.test's two addresses, on port.
func inRelay(port string) []delivery.Hop {
	return []delivery.Hop{hop("in.relay.test", "127.0.0.20:"+port), hop("in.relay.test", "127.0.0.21:"+port)}
}

// checkRoute fails the test unless r routes domain to want.
func checkRoute(t *testing.T, r *Router, domain string, want []delivery.Hop) {
	t.Helper()
	got, err := r.Route(context.Background(), domain)
	if err != nil {
		t.Fatalf("Route(%q): %v", domain, err)
	}
	if !reflect.DeepEqual(bare(got), want) {
		t.Errorf("Route(%q) =\n  %v\nwant\n  %v", domain, got, want)
	}
}

func TestRouterRoute(t *testing.T) {
	r, _ := newRouter(t, routeZone)
	addRoutes(t, r.Table, map[string]string{
		"static.test":       "smtp:[10.1.1.1]:2525:[10.1.1.2]",
		"viarelay.test":     "esmtp:relay.test",
		"viarelayport.test": "esmtp:relay.test:2526",
		"bracketed.test":    "smtp:[smarthost.test]",
		"unbracketed.test":  "smtp:smarthost.test",
		"mixed.test":        "smtp:[10.9.9.9]:relay.test",
		"v6.test":           "smtp:[IPv6:2001:db8::1]",
		".wild.test":        "[127.0.0.40]:2527",
	})
	tests := []struct {
		name   string
		domain string
		want   []delivery.Hop
	}{
		{"MX order by preference", "example.test", []delivery.Hop{
			hop("mx1.example.test", "127.0.0.2:25"),
			hop("mx2.example.test", "127.0.0.3:25"),
			hop("mx3.example.test", "127.0.0.4:25"),
			hop("mx3.example.test", "[::1]:25"),
		}},
		{"MX with several addresses", "relay.test", inRelay("25")},
		{"implicit MX", "in.relay.test", inRelay("25")},
		{"static literals in order, port on the first", "static.test", []delivery.Hop{
			hop("[10.1.1.1]", "10.1.1.1:2525"),
			hop("[10.1.1.2]", "10.1.1.2:25"),
		}},
		{"static host name uses its MX", "viarelay.test", inRelay("25")},
		{"static host name with port", "viarelayport.test", inRelay("2526")},
		{"[host name] uses its address, not its MX", "bracketed.test", []delivery.Hop{
			hop("smarthost.test", "127.0.0.30:25"),
		}},
		{"host name without brackets uses its MX", "unbracketed.test", []delivery.Hop{
			hop("mx1.example.test", "127.0.0.2:25"),
		}},
		{"literal then MX host", "mixed.test", append([]delivery.Hop{hop("[10.9.9.9]", "10.9.9.9:25")}, inRelay("25")...)},
		{"IPv6 literal route", "v6.test", []delivery.Hop{
			hop("[2001:db8::1]", "[2001:db8::1]:25"),
		}},
		{"parent route", "a.wild.test", []delivery.Hop{
			hop("[127.0.0.40]", "127.0.0.40:2527"),
		}},
		{"address literal domain", "[127.0.0.9]", []delivery.Hop{
			hop("[127.0.0.9]", "127.0.0.9:25"),
		}},
		{"IPv6 address literal domain", "[IPv6:::1]", []delivery.Hop{
			hop("[IPv6:::1]", "[::1]:25"),
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { checkRoute(t, r, tt.domain, tt.want) })
	}
}

func TestRouterPort(t *testing.T) {
	r, _ := newRouter(t, routeZone)
	if err := r.Table.Add("static.test", "smtp:[10.1.1.1]:2525:[10.1.1.2]"); err != nil {
		t.Fatal(err)
	}
	r.Port = 2500
	tests := []struct {
		domain string
		want   []delivery.Hop
	}{
		{"relay.test", inRelay("2500")},
		{"static.test", []delivery.Hop{hop("[10.1.1.1]", "10.1.1.1:2525"), hop("[10.1.1.2]", "10.1.1.2:2500")}},
		{"[127.0.0.9]", []delivery.Hop{hop("[127.0.0.9]", "127.0.0.9:2500")}},
	}
	for _, tt := range tests {
		checkRoute(t, r, tt.domain, tt.want)
	}
}

func TestRouterLiteralSkipsDNS(t *testing.T) {
	r, srv := newRouter(t, routeZone)
	if err := r.Table.Add("static.test", "smtp:[10.1.1.1]:[10.1.1.2]"); err != nil {
		t.Fatal(err)
	}
	if err := r.Table.Add("refused.test", "error:5.7.1:Relaying denied"); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	before := srv.Queries()
	if _, err := r.Route(ctx, "static.test"); err != nil {
		t.Fatalf("Route(static.test): %v", err)
	}
	if _, err := r.Route(ctx, "[192.0.2.1]"); err != nil {
		t.Fatalf("Route([192.0.2.1]): %v", err)
	}
	if _, err := r.Route(ctx, "refused.test"); err == nil {
		t.Fatal("Route(refused.test) succeeded, want the table's error")
	}
	if n := srv.Queries() - before; n != 0 {
		t.Errorf("static literal, address literal and error routes made %d DNS queries, want 0", n)
	}
	// Sanity check that the counter does move for an MX route.
	if _, err := r.Route(ctx, "example.test"); err != nil {
		t.Fatalf("Route(example.test): %v", err)
	}
	if srv.Queries() == before {
		t.Error("MX route made no DNS query: the query counter is not usable")
	}
}

func TestRouterErrors(t *testing.T) {
	r, srv := newRouter(t, routeZone)
	addRoutes(t, r.Table, map[string]string{
		"unknownuser.test":   "error:5.1.1:User unknown",
		"later.test":         "error:4.3.0:try later",
		"brokenstatic.test":  "esmtp:missing.relay.test",
		"brokenliteral.test": "smtp:[missing.relay.test]",
		"flaky.test":         "esmtp:flaky.relay.test",
	})
	srv.SetServfail("servfail.test", true)
	srv.SetServfail("flaky.relay.test", true)

	tests := []struct {
		name      string
		domain    string
		permanent bool
		enhanced  string
		msg       string // substring of Error.Msg
		dnsErr    bool   // the cause is a *mxresolve.Error
	}{
		{"NXDOMAIN", "missing.test", true, "5.1.2", "Host unknown", true},
		{"null MX", "nullmx.test", true, "5.1.10", "null MX", true},
		{"SERVFAIL", "servfail.test", false, "4.4.3", "lookup failure", true},
		{"MX without addresses", "noaddr.test", false, "4.4.3", "no address", true},
		{"bad address literal", "[127.0.0.300]", true, "5.1.2", "Bad address literal", false},
		{"IPv6 literal without tag", "[::1]", true, "5.1.2", "Bad address literal", false},
		{"table permanent error", "unknownuser.test", true, "5.1.1", "User unknown", false},
		{"table temporary error", "later.test", false, "4.3.0", "try later", false},
		{"static host NXDOMAIN", "brokenstatic.test", true, "5.1.2", "Host unknown", true},
		{"static [host] NXDOMAIN", "brokenliteral.test", true, "5.1.2", "Host unknown", true},
		{"static host SERVFAIL", "flaky.test", false, "4.4.3", "lookup failure", true},
	}
	ctx := context.Background()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hops, err := r.Route(ctx, tt.domain)
			if err == nil {
				t.Fatalf("Route(%q) = %v, want error", tt.domain, hops)
			}
			if hops != nil {
				t.Errorf("Route(%q) returned hops %v with the error", tt.domain, hops)
			}
			var re *Error
			if !errors.As(err, &re) {
				t.Fatalf("Route(%q) error %T %v, want *route.Error", tt.domain, err, err)
			}
			if re.Permanent != tt.permanent {
				t.Errorf("Permanent = %v, want %v (%v)", re.Permanent, tt.permanent, err)
			}
			if re.Enhanced != tt.enhanced {
				t.Errorf("Enhanced = %q, want %q (%v)", re.Enhanced, tt.enhanced, err)
			}
			if !strings.Contains(re.Msg, tt.msg) {
				t.Errorf("Msg = %q, want it to contain %q", re.Msg, tt.msg)
			}
			var me *mxresolve.Error
			if got := errors.As(err, &me); got != tt.dnsErr {
				t.Errorf("errors.As(*mxresolve.Error) = %v, want %v (%v)", got, tt.dnsErr, err)
			}
		})
	}
}

func TestRouterContextCancelled(t *testing.T) {
	r, _ := newRouter(t, routeZone)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	hops, err := r.Route(ctx, "example.test")
	if err == nil {
		t.Fatalf("Route with a cancelled context = %v, want error", hops)
	}
	var re *Error
	if !errors.As(err, &re) || re.Permanent {
		t.Errorf("Route with a cancelled context: %v, want a temporary *route.Error", err)
	}
}

func TestErrorUnwrap(t *testing.T) {
	cause := errors.New("boom")
	e := &Error{Enhanced: "4.4.3", Msg: "Routing failed", Err: cause}
	if !errors.Is(e, cause) {
		t.Error("errors.Is(e, cause) = false")
	}
	if got, want := e.Error(), "Routing failed: boom"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if got, want := (&Error{Msg: "User unknown"}).Error(), "User unknown"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
}

var statusRE = regexp.MustCompile(`^[45]\.[0-9]{1,3}\.[0-9]{1,3}$`)

func FuzzParseRHS(f *testing.F) {
	for _, s := range []string{
		"smtp:[10.1.1.1]:[10.1.1.2]",
		"esmtp:relay.example.com",
		"[127.0.0.1]:2526",
		"smtp:[10.1.1.1]:2525:[10.1.1.2]",
		"error:5.1.1:User unknown",
		"error:4.3.0:try later",
		`error:5.7.1:"quoted"`,
		"smtp:[IPv6:2001:db8::1]:25",
		"uucp:host",
		"smtp:2525",
		"smtp:",
		"smtp:[",
		"smtp:]]:[[",
		"error:",
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, rhs string) {
		e, err := ParseRHS(rhs)
		if err != nil {
			if e.Hosts != nil || e.Error != nil {
				t.Fatalf("ParseRHS(%q) returned an entry with error %v", rhs, err)
			}
			return
		}
		if len(e.Hosts) == 0 && e.Error == nil {
			t.Fatalf("ParseRHS(%q) succeeded with neither hosts nor an error", rhs)
		}
		if len(e.Hosts) > 0 && e.Error != nil {
			t.Fatalf("ParseRHS(%q) has both hosts and an error", rhs)
		}
		if e.Error != nil {
			if c := e.Error.Enhanced; !statusRE.MatchString(c) {
				t.Fatalf("ParseRHS(%q) error status %q", rhs, c)
			}
			if e.Error.Permanent != (e.Error.Enhanced[0] == '5') {
				t.Fatalf("ParseRHS(%q) Permanent=%v for %q", rhs, e.Error.Permanent, e.Error.Enhanced)
			}
			if e.Error.Msg == "" {
				t.Fatalf("ParseRHS(%q) error has no text", rhs)
			}
		}
		for _, h := range e.Hosts {
			if h.Name == "" {
				t.Fatalf("ParseRHS(%q) has a host without a name: %+v", rhs, e.Hosts)
			}
			if strings.ContainsAny(h.Name, "[] \t") {
				t.Fatalf("ParseRHS(%q) host name %q keeps brackets or space", rhs, h.Name)
			}
		}
	})
}

// The hops carry what tls_policy and authinfo are looked up by: the relay
// as the mailertable names it (with its port) for static routes, the
// recipient domain and MX=true (MTA-STS and DANE apply) for MX delivery.
func TestRouterTLSPolicyHop(t *testing.T) {
	r, _ := newRouter(t, routeZone)
	for key, rhs := range map[string]string{
		"static.test":    "smtp:[10.1.1.1]:2525",
		"bracketed.test": "smtp:[smarthost.test]:587",
		"viarelay.test":  "esmtp:relay.test",
	} {
		if err := r.Table.Add(key, rhs); err != nil {
			t.Fatal(err)
		}
	}
	for domain, want := range map[string]struct {
		p  tlspolicy.Hop
		mx bool
	}{
		"example.test":   {tlspolicy.Hop{Domain: "example.test"}, true},
		"static.test":    {tlspolicy.Hop{Domain: "static.test", Relay: "10.1.1.1", Literal: true, Port: 2525}, false},
		"bracketed.test": {tlspolicy.Hop{Domain: "bracketed.test", Relay: "smarthost.test", Literal: true, Port: 587}, false},
		"viarelay.test":  {tlspolicy.Hop{Domain: "viarelay.test", Relay: "relay.test", Port: 25}, false},
		"[127.0.0.9]":    {tlspolicy.Hop{Relay: "127.0.0.9", Literal: true, Port: 25}, false},
	} {
		hops, err := r.Route(context.Background(), domain)
		if err != nil || len(hops) == 0 {
			t.Fatalf("Route(%s): %v %v", domain, hops, err)
		}
		for _, h := range hops {
			if h.Policy != want.p || h.MX != want.mx {
				t.Errorf("Route(%s): hop %s policy %+v mx %v, want %+v mx %v", domain, h.Name, h.Policy, h.MX, want.p, want.mx)
			}
		}
	}
}
