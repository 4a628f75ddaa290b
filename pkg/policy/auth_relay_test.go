package policy

import (
	"net/netip"
	"strings"
	"testing"
)

// An SMTP AUTH user may relay; every other access rule still applies.
func TestCheckRcptAuthenticated(t *testing.T) {
	p := mustParse(t, map[string]string{"access": actionsAccess})
	stranger := netip.MustParseAddr("203.0.113.1")
	cases := []struct {
		name     string
		client   Client
		from     string
		rcpt     string
		reject   int // 0: accepted
		ruleLike string
	}{
		{"user relays to any domain", Client{Addr: stranger, User: "app1"}, "a@b.example", "u@other.example", 0, "authenticated as app1"},
		{"no user: relaying denied", Client{Addr: stranger}, "a@b.example", "u@other.example", 550, "no access entry grants relay"},
		{"To REJECT still applies", Client{Addr: stranger, User: "app1"}, "a@b.example", "u@reject.example", 550, "To:reject.example REJECT"},
		{"From REJECT still applies", Client{Addr: stranger, User: "app1"}, "bad@sender.example", "u@other.example", 550, "From:bad@sender.example REJECT"},
		{"Connect REJECT still applies", Client{Addr: netip.MustParseAddr("192.0.2.66"), User: "app1"}, "a@b.example", "u@other.example", 550, "Connect:192.0.2.66 REJECT"},
		{"To DISCARD still applies", Client{Addr: stranger, User: "app1"}, "a@b.example", "u@discard.example", 0, "To:discard.example DISCARD"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			v := p.CheckRcpt(tc.client, tc.from, tc.rcpt)
			switch {
			case tc.reject == 0 && v.Reject != nil:
				t.Fatalf("refused %v (%s)", v.Reject, v.Rule)
			case tc.reject != 0 && (v.Reject == nil || v.Reject.Code != tc.reject):
				t.Fatalf("got %+v, want a %d", v, tc.reject)
			}
			if !strings.Contains(v.Rule, tc.ruleLike) {
				t.Fatalf("rule %q, want it to mention %q", v.Rule, tc.ruleLike)
			}
		})
	}
}
