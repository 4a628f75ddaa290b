package shaping_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/mailfwd/mailfwd/pkg/shaping"
)

// [*] gives every next hop without a rule of its own its own slots, keyed
// by its address; a named next hop keeps its rule; [*] takes only
// concurrency.
func TestAnyHostRule(t *testing.T) {
	r := shaping.NewRules()
	if err := r.Add("[*]", "concurrency=3", 1); err != nil {
		t.Fatal(err)
	}
	if err := r.Add("[relay.example]", "concurrency=9", 2); err != nil {
		t.Fatal(err)
	}
	a, ok := r.Host("mx1.example.net", netip.MustParseAddr("192.0.2.1"))
	b, _ := r.Host("mx2.example.net", netip.MustParseAddr("192.0.2.2"))
	if !ok || a.Limit.Concurrency != 3 || a.Key != "h.192.0.2.1" || b.Key != "h.192.0.2.2" {
		t.Errorf("[*]: %+v, %+v", a, b)
	}
	if r.Named(a.Key) {
		t.Errorf("%s counted as a named destination (unbounded metric labels)", a.Key)
	}
	if d, _ := r.Host("relay.example", netip.MustParseAddr("192.0.2.3")); d.Limit.Concurrency != 9 {
		t.Errorf("a named next hop lost its rule to [*]: %+v", d)
	}
	for _, bad := range []string{"rate=1/s", "concurrency=2,new-conns=1/s", "msgs-per-conn=5"} {
		if err := shaping.NewRules().Add("[*]", bad, 1); err == nil || !strings.Contains(err.Error(), "only concurrency") {
			t.Errorf("[*] %s: %v", bad, err)
		}
	}
	if err := r.Add("[*]", "concurrency=1", 3); err == nil {
		t.Error("a second [*] accepted")
	}
}

func TestParseNewConns(t *testing.T) {
	l, err := shaping.ParseLimit("new-conns=30/m conn-burst=4,concurrency=2")
	if err != nil || l != (shaping.Limit{Concurrency: 2, NewConns: 0.5, ConnBurst: 4}) || !l.Fleet() {
		t.Fatalf("%+v %v", l, err)
	}
	if back, err := shaping.ParseLimit(l.String()); err != nil || back != l {
		t.Errorf("round trip %q: %+v %v", l.String(), back, err)
	}
}

// FuzzParseLimit: any spelling either fails or yields a limit within the
// bounds whose canonical form reads back to it.
func FuzzParseLimit(f *testing.F) {
	for _, s := range []string{"concurrency=2,rate=4/s", "new-conns=30/m conn-burst=4", "conns=0.5", "burst=3 msgs-per-conn=9", "rate=1e5/s"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, spec string) {
		l, err := shaping.ParseLimit(spec)
		if err != nil {
			return
		}
		if l.Concurrency > shaping.MaxConcurrency || l.Rate > shaping.MaxRate || l.NewConns > shaping.MaxRate ||
			l.Burst > shaping.MaxBurst || l.ConnBurst > shaping.MaxBurst || l.MsgsPerConn > shaping.MaxMsgsPerConn ||
			l.Rate < 0 || l.NewConns < 0 || (l.Rate > 0 && l.Rate < shaping.MinRate) || (l.NewConns > 0 && l.NewConns < shaping.MinRate) {
			t.Fatalf("%q: out of bounds: %+v", spec, l)
		}
		if l.Zero() {
			return
		}
		back, err := shaping.ParseLimit(l.String())
		if err != nil || back != l {
			t.Fatalf("%q → %q → %+v, %v; want %+v", spec, l.String(), back, err, l)
		}
	})
}
