package route

import (
	"context"
	"strings"
	"testing"
)

func TestRouteForSender(t *testing.T) {
	table := NewTable()
	if err := table.Add("special.example", "smtp:[192.0.2.10]"); err != nil {
		t.Fatal(err)
	}
	if err := table.Add(".", "smtp:[192.0.2.1]"); err != nil {
		t.Fatal(err)
	}
	a, _ := ParseRHS("smtp:[192.0.2.20]:587")
	b, _ := ParseRHS("smtp:[192.0.2.30]:587")
	r := &Router{Table: table, BySender: func(sender, user string) (SenderRoute, bool) {
		switch {
		case strings.HasSuffix(sender, "@a.example"):
			return SenderRoute{Entry: a, Rule: "senderroutes:1: @a.example"}, true
		case user == "bob":
			return SenderRoute{Entry: b, MailertableFirst: true, Rule: "senderroutes:2: auth:bob"}, true
		}
		return SenderRoute{}, false
	}}
	for _, c := range []struct {
		req       Request
		addr, why string
	}{
		{Request{Domain: "any.example", Sender: "x@a.example"}, "192.0.2.20:587", "senderroutes:1: @a.example"},
		{Request{Domain: "special.example", Sender: "x@a.example"}, "192.0.2.20:587", "senderroutes:1: @a.example"}, // the sender route wins
		{Request{Domain: "any.example", Sender: "x@b.example", AuthUser: "bob"}, "192.0.2.30:587", "senderroutes:2: auth:bob"},
		{Request{Domain: "special.example", Sender: "x@b.example", AuthUser: "bob"}, "192.0.2.10:25", "mailertable special.example"}, // mailertable-first
		{Request{Domain: "any.example", Sender: "x@c.example"}, "192.0.2.1:25", "mailertable ."},
	} {
		hops, why, err := r.RouteFor(context.Background(), c.req)
		if err != nil || len(hops) != 1 || hops[0].Addr.String() != c.addr || why != c.why {
			t.Errorf("RouteFor(%+v) = %v, %q, %v; want %s via %q", c.req, hops, why, err, c.addr, c.why)
		}
	}
}
