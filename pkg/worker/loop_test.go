package worker

import (
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/mailfwd/mailfwd/pkg/delivery"
	"github.com/mailfwd/mailfwd/pkg/sink"
)

// A route whose next hop is this mail system's own listening address is a
// loop: a permanent 5.4.6 with a DSN, and nothing is sent to it.
func TestDeliveryToSelfIsALoop(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r := newRig(t, ctx, delivery.Config{})
	own := sink.New(sink.Config{}) // stands in for our own ingress
	ownAddr := own.Start(t, "127.0.0.1:0")
	other := sink.New(sink.Config{})
	r.route("loop.test", ownAddr)
	r.route(".", other.Start(t, "127.0.0.1:0"))
	r.run(Config{RepanicForTests: true, LocalAddrs: []netip.AddrPort{netip.MustParseAddrPort(ownAddr)}}, nil, nil)

	r.message(sender, testBody("loop"), map[string][]string{"loop.test": {"u@loop.test"}})
	waitFor(t, ctx, "the DSN", func() bool { return len(dsnsTo(other, sender)) > 0 })
	d := string(dsnsTo(other, sender)[0].Data)
	for _, want := range []string{"Final-Recipient: rfc822; u@loop.test", "Status: 5.4.6", "mail loops back to me (MX problem?)"} {
		if !strings.Contains(d, want) {
			t.Errorf("DSN lacks %q:\n%s", want, d)
		}
	}
	if n := own.Connections(); n != 0 {
		t.Errorf("%d connections to our own address", n)
	}
}

func TestSelf(t *testing.T) {
	s := newSelf([]string{"Relay.Example.COM."}, []netip.AddrPort{netip.MustParseAddrPort("192.0.2.7:25"), netip.MustParseAddrPort("[::]:2525")})
	hop := func(name, addr string) delivery.Hop {
		return delivery.Hop{Name: name, Addr: netip.MustParseAddrPort(addr)}
	}
	for _, tt := range []struct {
		hop  delivery.Hop
		self bool
	}{
		{hop("relay.example.com.", "198.51.100.1:25"), true}, // our name as MX
		{hop("[192.0.2.7]", "192.0.2.7:25"), true},
		{hop("[192.0.2.7]", "192.0.2.7:587"), false},
		{hop("[127.0.0.1]", "127.0.0.1:2525"), true}, // listening on all addresses
		{hop("mx.other.test", "198.51.100.1:25"), false},
	} {
		if got := s.is(tt.hop); got != tt.self {
			t.Errorf("is(%v) = %v, want %v", tt.hop, got, tt.self)
		}
	}
	// sendmail's rule: hops from the first one that is us are dropped.
	hops, err := s.notSelf([]delivery.Hop{hop("mx1.other.test", "198.51.100.1:25"), hop("relay.example.com", "192.0.2.7:25"), hop("mx3.other.test", "198.51.100.3:25")})
	if err != nil || len(hops) != 1 {
		t.Errorf("notSelf = %v, %v; want the first hop only", hops, err)
	}
}

// The delivery log names the host tried when no connection was made
// (sendmail's relay=), not "[none]".
func TestLogNamesHostTried(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	r := newRig(t, ctx, delivery.Config{})
	ln := listen(t)
	dead := ln.Addr().String()
	ln.Close()
	r.route(".", dead)
	var logs syncBuffer
	r.run(Config{RepanicForTests: true, RetryFirst: time.Hour, RetryMax: time.Hour,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))}, nil, nil)
	r.message(sender, testBody("dead"), map[string][]string{"dead.test": {"u@dead.test"}})
	waitFor(t, ctx, "the deferral log line", func() bool { return strings.Contains(logs.String(), "stat=Deferred") })
	line := grep(logs.String(), "stat=Deferred")
	if strings.Contains(line, "relay=[none]") || !strings.Contains(line, "relay=[127.0.0.1]") {
		t.Errorf("log line %s\nwant relay=[127.0.0.1]", line)
	}
}
