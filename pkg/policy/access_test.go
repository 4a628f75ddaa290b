package policy

import (
	"net/netip"
	"strings"
	"testing"
)

type rcptCase struct {
	name     string
	client   string // IP address
	host     string // client host name
	from     string
	rcpt     string
	code     int    // 0 = accepted
	enh      string // expected enhanced status when code != 0
	text     string // expected reply text when code != 0
	discard  bool
	ruleLike string // substring of Rule (exact when it starts with "=")
}

func runRcptCases(t *testing.T, p *Policy, cases []rcptCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := Client{Hostname: tc.host}
			if tc.client != "" {
				c.Addr = netip.MustParseAddr(tc.client)
			}
			v := p.CheckRcpt(c, tc.from, tc.rcpt)
			if tc.code == 0 {
				if v.Reject != nil {
					t.Fatalf("rejected %v (rule %q), want accepted", *v.Reject, v.Rule)
				}
			} else {
				if v.Reject == nil {
					t.Fatalf("accepted (rule %q, discard %v), want %d %s %s", v.Rule, v.Discard, tc.code, tc.enh, tc.text)
				}
				want := Reply{Code: tc.code, Enhanced: tc.enh, Text: tc.text}
				if *v.Reject != want {
					t.Fatalf("reply %q, want %q (rule %q)", v.Reject.String(), want.String(), v.Rule)
				}
			}
			if v.Discard != tc.discard {
				t.Fatalf("discard = %v, want %v (rule %q)", v.Discard, tc.discard, v.Rule)
			}
			if exact, ok := strings.CutPrefix(tc.ruleLike, "="); ok {
				if v.Rule != exact {
					t.Fatalf("rule %q, want %q", v.Rule, exact)
				}
			} else if !strings.Contains(v.Rule, tc.ruleLike) {
				t.Fatalf("rule %q, want it to contain %q", v.Rule, tc.ruleLike)
			}
		})
	}
}

const actionsAccess = `# every action
To:relay.example        RELAY
To:ok.example           OK
To:reject.example       REJECT
To:discard.example      DISCARD
To:err1.example         ERROR:5.7.1:Go away
To:err2.example         ERROR:"550 Go away now"
To:err3.example         ERROR:550 5.7.2 Policy says no
To:err4.example         ERROR:5.7.0:553 Custom code
To:err5.example         ERROR:4.7.1:Try later
To:sub.relay.example    SKIP
To:legacy.example       550 Old style
From:bad@sender.example REJECT
From:spam.example       ERROR:5.7.1:"You are a spammer"
From:drop.example       DISCARD
From:friend.example     OK
From:rfriend.example    RELAY
Connect:192.0.2.66      REJECT
Connect:192.0.2.67      ERROR:"554 Go away client"
Connect:192.0.2.68      DISCARD
Connect:192.0.2.69      OK
Connect:10.0.0.0/8      RELAY    # our network
to:Err6.Example         error:5.7.1:550 has # in it
`

func TestCheckRcptActions(t *testing.T) {
	p := mustParse(t, map[string]string{"access": actionsAccess})
	const stranger = "203.0.113.1"
	runRcptCases(t, p, []rcptCase{
		{name: "To RELAY", client: stranger, from: "a@b.example", rcpt: "u@relay.example", ruleLike: "=access:2: To:relay.example RELAY"},
		{name: "To RELAY parent domain", client: stranger, from: "a@b.example", rcpt: "u@a.b.relay.example", ruleLike: "=access:2: To:relay.example RELAY"},
		{name: "To SKIP stops the search", client: stranger, from: "a@b.example", rcpt: "u@x.sub.relay.example",
			code: 550, enh: "5.7.1", text: "<u@x.sub.relay.example>... Relaying denied", ruleLike: "=no access entry grants relay"},
		// sendmail: "Accept does not mean relay" — To: OK never opens relaying to a non-local domain.
		{name: "To OK does not grant relay", client: stranger, rcpt: "u@ok.example", code: 550, enh: "5.7.1", text: "<u@ok.example>... Relaying denied", ruleLike: "no access entry"},
		{name: "To REJECT", client: stranger, rcpt: "u@reject.example", code: 550, enh: "5.7.1", text: "<u@reject.example>... Access denied", ruleLike: "=access:4: To:reject.example REJECT"},
		{name: "To DISCARD", client: stranger, rcpt: "u@discard.example", discard: true, ruleLike: "access:5:"},
		{name: "To ERROR D.S.N:text", client: stranger, rcpt: "u@err1.example", code: 550, enh: "5.7.1", text: "<u@err1.example>... Go away", ruleLike: "=access:6: To:err1.example ERROR:5.7.1:550 Go away"},
		{name: "To ERROR quoted code", client: stranger, rcpt: "u@err2.example", code: 550, enh: "5.0.0", text: "<u@err2.example>... Go away now", ruleLike: "access:7:"},
		{name: "To ERROR code enhanced text", client: stranger, rcpt: "u@err3.example", code: 550, enh: "5.7.2", text: "<u@err3.example>... Policy says no", ruleLike: "access:8:"},
		{name: "To ERROR D.S.N:code text", client: stranger, rcpt: "u@err4.example", code: 553, enh: "5.7.0", text: "<u@err4.example>... Custom code", ruleLike: "access:9:"},
		{name: "To ERROR temporary", client: stranger, rcpt: "u@err5.example", code: 450, enh: "4.7.1", text: "<u@err5.example>... Try later", ruleLike: "access:10:"},
		{name: "To legacy 550 text", client: stranger, rcpt: "u@legacy.example", code: 550, enh: "5.0.0", text: "<u@legacy.example>... Old style", ruleLike: "access:12:"},
		{name: "ERROR text keeps #, tag and key case-insensitive", client: stranger, rcpt: "U@ERR6.example", code: 550, enh: "5.7.1", text: "<U@ERR6.example>... has # in it", ruleLike: "access:23: To:err6.example"},
		{name: "To REJECT beats Connect RELAY and friend", client: "10.1.1.1", from: "x@friend.example", rcpt: "u@reject.example", code: 550, enh: "5.7.1", text: "<u@reject.example>... Access denied"},

		{name: "From full address REJECT", client: stranger, from: "bad@sender.example", rcpt: "u@relay.example", code: 550, enh: "5.7.1", text: "Access denied", ruleLike: "=access:13: From:bad@sender.example REJECT"},
		{name: "From other user of that domain", client: stranger, from: "good@sender.example", rcpt: "u@relay.example", ruleLike: "access:2:"},
		{name: "From ERROR via parent domain", client: stranger, from: "x@mx.spam.example", rcpt: "u@relay.example", code: 550, enh: "5.7.1", text: "You are a spammer", ruleLike: "access:14:"},
		{name: "From DISCARD", client: stranger, from: "x@drop.example", rcpt: "u@relay.example", discard: true, ruleLike: "access:15:"},
		{name: "null sender skips From", client: stranger, from: "", rcpt: "u@relay.example", ruleLike: "access:2:"},
		{name: "From OK never grants relay (stock)", client: stranger, from: "x@friend.example", rcpt: "u@other.example", code: 550, enh: "5.7.1", text: "<u@other.example>... Relaying denied"},
		{name: "From RELAY never grants relay (stock)", client: stranger, from: "x@rfriend.example", rcpt: "u@other.example", code: 550, enh: "5.7.1", text: "<u@other.example>... Relaying denied"},

		{name: "Connect REJECT", client: "192.0.2.66", from: "x@y.example", rcpt: "u@relay.example", code: 550, enh: "5.7.1", text: "Access denied", ruleLike: "=access:18: Connect:192.0.2.66 REJECT"},
		{name: "Connect REJECT waived for From OK friend", client: "192.0.2.66", from: "x@friend.example", rcpt: "u@relay.example", ruleLike: "=access:2: To:relay.example RELAY (access:18: Connect:192.0.2.66 REJECT waived for friend access:16: From:friend.example OK)"},
		{name: "Connect REJECT waived for From RELAY friend", client: "192.0.2.66", from: "x@rfriend.example", rcpt: "u@relay.example", ruleLike: "access:2:"},
		{name: "friend still needs relay permission", client: "192.0.2.66", from: "x@friend.example", rcpt: "u@other.example", code: 550, enh: "5.7.1", text: "<u@other.example>... Relaying denied"},
		{name: "Connect ERROR", client: "192.0.2.67", rcpt: "u@relay.example", code: 554, enh: "5.0.0", text: "Go away client", ruleLike: "access:19:"},
		{name: "Connect DISCARD", client: "192.0.2.68", rcpt: "u@relay.example", discard: true, ruleLike: "access:20:"},
		{name: "Connect DISCARD waived for friend", client: "192.0.2.68", from: "x@friend.example", rcpt: "u@relay.example", ruleLike: "access:2:"},
		{name: "Connect OK does not relay", client: "192.0.2.69", rcpt: "u@other.example", code: 550, enh: "5.7.1", text: "<u@other.example>... Relaying denied"},
		{name: "Connect CIDR RELAY relays anywhere", client: "10.200.3.4", rcpt: "u@other.example", ruleLike: "=access:22: Connect:10.0.0.0/8 RELAY"},
		{name: "no entry", client: stranger, rcpt: "u@other.example", code: 550, enh: "5.7.1", text: "<u@other.example>... Relaying denied", ruleLike: "=no access entry grants relay"},
		{name: "invalid recipient", client: stranger, rcpt: "nodomain", code: 553, enh: "5.1.3", text: "<nodomain>... address has no domain (user@domain required)"},
	})
}

const precedenceAccess = `Connect:10                 REJECT
Connect:10.70              RELAY
Connect:10.70.80           REJECT
Connect:10.70.80.0/28      OK
Connect:10.70.80.90        RELAY
Connect:172.16.0.0/12      RELAY
Connect:172.16.5           REJECT
Connect:2001:db8::/32      RELAY
Connect:IPv6:2001:db8:bad  REJECT
Connect:[IPv6:2001:db8:bad::25] RELAY
Connect:example.net        RELAY
Connect:bad.example.net    REJECT
Connect:localhost          RELAY
To:example.com             RELAY
To:sub.example.com         REJECT
To:boss@sub.example.com    RELAY
To:postmaster@             RELAY
To:+4512345678/TYPE=PLMN@mms.example  REJECT
`

func TestCheckRcptLongestMatch(t *testing.T) {
	p := mustParse(t, map[string]string{"access": precedenceAccess})
	denied := func(r string) string { return "<" + r + ">... Relaying denied" }
	runRcptCases(t, p, []rcptCase{
		{name: "one-octet prefix", client: "10.1.1.1", rcpt: "u@x.example", code: 550, enh: "5.7.1", text: "Access denied", ruleLike: "=access:1: Connect:10 REJECT"},
		{name: "two-octet prefix beats one", client: "10.70.1.1", rcpt: "u@x.example", ruleLike: "=access:2: Connect:10.70 RELAY"},
		{name: "CIDR /28 beats /24 prefix", client: "10.70.80.5", rcpt: "u@x.example", code: 550, enh: "5.7.1", text: denied("u@x.example")},
		{name: "three-octet prefix beats two", client: "10.70.80.20", rcpt: "u@x.example", code: 550, enh: "5.7.1", text: "Access denied", ruleLike: "access:3:"},
		{name: "full address beats prefixes", client: "10.70.80.90", rcpt: "u@x.example", ruleLike: "access:5:"},
		{name: "prefix inside CIDR wins", client: "172.16.5.9", rcpt: "u@x.example", code: 550, enh: "5.7.1", text: "Access denied", ruleLike: "access:7:"},
		{name: "CIDR outside prefix", client: "172.17.0.1", rcpt: "u@x.example", ruleLike: "access:6:"},
		{name: "IPv4-mapped IPv6 client", client: "::ffff:10.70.1.1", rcpt: "u@x.example", ruleLike: "access:2:"},
		{name: "IPv6 CIDR", client: "2001:db8:1::5", rcpt: "u@x.example", ruleLike: "access:8:"},
		{name: "IPv6 group prefix beats CIDR", client: "2001:db8:bad::1", rcpt: "u@x.example", code: 550, enh: "5.7.1", text: "Access denied", ruleLike: "access:9:"},
		{name: "IPv6 literal address beats prefix", client: "2001:db8:bad::25", rcpt: "u@x.example", ruleLike: "access:10:"},
		{name: "host name parent domain", client: "198.51.100.1", host: "mail.example.net", rcpt: "u@x.example", ruleLike: "access:11:"},
		{name: "longer host domain wins", client: "198.51.100.1", host: "mx.bad.example.net", rcpt: "u@x.example", code: 550, enh: "5.7.1", text: "Access denied", ruleLike: "access:12:"},
		{name: "host name case and trailing dot", client: "198.51.100.1", host: "MX.Bad.Example.NET.", rcpt: "u@x.example", code: 550, enh: "5.7.1", text: "Access denied", ruleLike: "access:12:"},
		{name: "IP is looked up before host name", client: "10.1.1.1", host: "mail.example.net", rcpt: "u@x.example", code: 550, enh: "5.7.1", text: "Access denied", ruleLike: "access:1:"},
		{name: "loopback without PTR is localhost", client: "127.0.0.1", rcpt: "u@x.example", ruleLike: "access:13:"},
		{name: "unknown host name", client: "198.51.100.1", host: "example.org", rcpt: "u@x.example", code: 550, enh: "5.7.1", text: denied("u@x.example")},
		{name: "To parent domain", client: "198.51.100.1", rcpt: "u@a.example.com", ruleLike: "access:14:"},
		{name: "To subdomain beats parent", client: "198.51.100.1", rcpt: "u@b.sub.example.com", code: 550, enh: "5.7.1", text: "<u@b.sub.example.com>... Access denied", ruleLike: "access:15:"},
		{name: "To full address beats domain", client: "198.51.100.1", rcpt: "Boss@SUB.example.com", ruleLike: "access:16:"},
		{name: "To domain beats user@", client: "198.51.100.1", rcpt: "postmaster@sub.example.com", code: 550, enh: "5.7.1", text: "<postmaster@sub.example.com>... Access denied"},
		{name: "To user@ applies at any domain", client: "198.51.100.1", rcpt: "PostMaster@elsewhere.org", ruleLike: "=access:17: To:postmaster@ RELAY"},
		{name: "MMS address key", client: "198.51.100.1", rcpt: "+4512345678/TYPE=PLMN@mms.example", code: 550, enh: "5.7.1", text: "<+4512345678/TYPE=PLMN@mms.example>... Access denied"},
	})
	if !p.NeedsClientHostname() {
		t.Error("NeedsClientHostname = false with Connect: host name entries")
	}
}

func TestCheckRcptUntagged(t *testing.T) {
	p := mustParse(t, map[string]string{"access": `example.org      REJECT
To:example.org   RELAY
sub.example.org  RELAY
192.0.2.1        RELAY
IPv6:2001:db8::7 RELAY
spammer@         REJECT
`})
	runRcptCases(t, p, []rcptCase{
		{name: "tagged beats untagged for the same key", client: "198.51.100.9", rcpt: "u@example.org", ruleLike: "=access:2: To:example.org RELAY"},
		{name: "longer untagged key beats shorter tagged", client: "198.51.100.9", rcpt: "u@x.sub.example.org", ruleLike: "=access:3: sub.example.org RELAY"},
		{name: "untagged applies to From", client: "198.51.100.9", from: "x@example.org", rcpt: "u@example.org", code: 550, enh: "5.7.1", text: "Access denied", ruleLike: "access:1:"},
		{name: "untagged applies to Connect host names", client: "198.51.100.9", host: "mail.example.org", rcpt: "u@example.org", code: 550, enh: "5.7.1", text: "Access denied", ruleLike: "access:1:"},
		{name: "untagged IP applies to Connect", client: "192.0.2.1", rcpt: "u@other.example", ruleLike: "=access:4: 192.0.2.1 RELAY"},
		{name: "untagged IPv6", client: "2001:db8::7", rcpt: "u@other.example", ruleLike: "access:5:"},
		{name: "untagged user@ applies to To", client: "198.51.100.9", rcpt: "spammer@other.example", code: 550, enh: "5.7.1", text: "<spammer@other.example>... Access denied"},
		{name: "domain entry beats user@", client: "198.51.100.9", rcpt: "spammer@example.org", ruleLike: "access:2:"},
		{name: "untagged user@ applies to From", client: "198.51.100.9", from: "spammer@x.example", rcpt: "u@example.org", code: 550, enh: "5.7.1", text: "Access denied"},
	})
	if !p.NeedsClientHostname() {
		t.Error("untagged domains apply to Connect: NeedsClientHostname must be true")
	}
	q := mustParse(t, map[string]string{"access": "Connect:localhost RELAY\nConnect:127.0.0.1 RELAY\nTo:example.com RELAY\nFrom:x.example OK\n10.1 RELAY\n"})
	if q.NeedsClientHostname() {
		t.Error("NeedsClientHostname = true without Connect: host names other than localhost")
	}
}

// The MMS gateway's access map from the seeds, verbatim.
const mmsAccess = `Connect:localhost                               RELAY
Connect:127.0.0.1                               RELAY
#
# Connections from our inside MMSC are allowed
Connect:our-mmsc.intra.example.com              RELAY
#
# Our SMTP domain, so the MM4 gw accepts normal email for company users
To:example.com                                  RELAY
# Our MMS domain, so we accept MMS from other operators
To:mms.mnc001.mccXXX.gprs                       RELAY
# One remote operator who is down at the moment. Our inside MMSC is still sending, but we are rejecting.
To:mms.mnc002.mccXXX.gprs                       REJECT
#
# The same remote operator. We won't take from him for the moment. So his from address is not white listed
#From:mms.mnc002.mccXXX.gprs    OK
# White listing of from addresses from other operators. We only accept from those we have interconnect agreement with
From:mms.mnc003.mccXXX.gprs     OK
From:mms.mnc004.mccXXX.gprs     OK
From:mms.mnc005.mccXXX.gprs     OK
From:mms.mnc006.mccXXX.gprs     OK
From:mms.mnc007.mccXXX.gprs     OK
#
# We accept when local users (root) on our MM4 gw sends email
From:mm4gw1.example.com         OK
From:mm4gw2.example.com         OK
#
`

func TestMMSExample(t *testing.T) {
	const (
		plmn001 = "+4512345678/TYPE=PLMN@mms.mnc001.mccXXX.gprs"
		plmn002 = "+4587654321/TYPE=PLMN@mms.mnc002.mccxxx.gprs"
		op003   = "+4511111111/TYPE=PLMN@mms.mnc003.mccxxx.gprs"
		op009   = "+4599999999/TYPE=PLMN@mms.mnc009.mccxxx.gprs"
		unknown = "198.51.100.7"
	)
	common := func(p *Policy) []rcptCase {
		return []rcptCase{
			{name: "localhost relays anywhere", client: "127.0.0.1", from: "root@mm4gw1.example.com", rcpt: "someone@other.example.org", ruleLike: "access:2: Connect:127.0.0.1 RELAY"},
			{name: "localhost relays MMS", client: "127.0.0.1", from: op009, rcpt: plmn001, ruleLike: "access:2:"},
			{name: "localhost by name", client: "192.0.2.10", host: "localhost", rcpt: "someone@other.example.org", ruleLike: "=access:1: Connect:localhost RELAY"},
			{name: "localhost still refused for mnc002", client: "127.0.0.1", from: op003, rcpt: plmn002, code: 550, enh: "5.7.1",
				text: "<" + plmn002 + ">... Access denied", ruleLike: "=access:12: To:mms.mnc002.mccxxx.gprs REJECT"},
			{name: "inside MMSC by verified PTR relays anywhere", client: "10.9.8.7", host: "our-mmsc.intra.example.com", from: op009, rcpt: "someone@other.example.org", ruleLike: "=access:5: Connect:our-mmsc.intra.example.com RELAY"},
			{name: "inside MMSC refused for mnc002", client: "10.9.8.7", host: "our-mmsc.intra.example.com", rcpt: plmn002, code: 550, enh: "5.7.1", text: "<" + plmn002 + ">... Access denied"},
			{name: "unknown client to other domain", client: unknown, from: "a@b.example", rcpt: "x@other.example.org", code: 550, enh: "5.7.1",
				text: "<x@other.example.org>... Relaying denied", ruleLike: "=no access entry grants relay"},
			{name: "whitelisted sender does not open relaying", client: unknown, from: op003, rcpt: "x@other.example.org", code: 550, enh: "5.7.1", text: "<x@other.example.org>... Relaying denied"},
			{name: "unknown client refused for mnc002", client: unknown, from: op003, rcpt: plmn002, code: 550, enh: "5.7.1", text: "<" + plmn002 + ">... Access denied"},
		}
	}

	t.Run("stock", func(t *testing.T) {
		p := mustParse(t, map[string]string{"access": mmsAccess})
		if p.Settings.FromWhitelist {
			t.Fatal("from_whitelist defaults to true")
		}
		runRcptCases(t, p, append(common(p),
			rcptCase{name: "unknown client to company domain", client: unknown, from: "a@internet.example", rcpt: "user@example.com", ruleLike: "=access:8: To:example.com RELAY"},
			rcptCase{name: "unknown client to our MMS domain", client: unknown, from: op009, rcpt: plmn001, ruleLike: "=access:10: To:mms.mnc001.mccxxx.gprs RELAY"},
			rcptCase{name: "whitelisted operator to our MMS domain", client: unknown, from: op003, rcpt: plmn001, ruleLike: "access:10:"},
		))
	})
	t.Run("from_whitelist", func(t *testing.T) {
		p := mustParse(t, map[string]string{"access": mmsAccess, "settings": "# the MMS gateway patch\nfrom_whitelist = true\n"})
		if !p.Settings.FromWhitelist {
			t.Fatal("from_whitelist not set")
		}
		runRcptCases(t, p, append(common(p),
			rcptCase{name: "interconnect partner accepted", client: unknown, from: op003, rcpt: plmn001,
				ruleLike: "=access:10: To:mms.mnc001.mccxxx.gprs RELAY; access:17: From:mms.mnc003.mccxxx.gprs OK (from_whitelist)"},
			rcptCase{name: "partner sender in upper case", client: unknown, from: "+4511111111/TYPE=PLMN@MMS.MNC003.MCCXXX.GPRS", rcpt: plmn001, ruleLike: "access:17:"},
			rcptCase{name: "non-partner denied", client: unknown, from: op009, rcpt: plmn001, code: 550, enh: "5.7.1",
				text: "<" + plmn001 + ">... Relaying denied", ruleLike: "sender not whitelisted"},
			rcptCase{name: "null sender is not whitelisted", client: unknown, from: "", rcpt: plmn001, code: 550, enh: "5.7.1",
				text: "<" + plmn001 + ">... Relaying denied", ruleLike: "sender not whitelisted"},
			rcptCase{name: "local MM4 gw user to company domain", client: unknown, from: "root@mm4gw1.example.com", rcpt: "user@example.com", ruleLike: "access:24: From:mm4gw1.example.com OK"},
			rcptCase{name: "internet sender to company domain denied", client: unknown, from: "a@internet.example", rcpt: "user@example.com", code: 550, enh: "5.7.1",
				text: "<user@example.com>... Relaying denied", ruleLike: "sender not whitelisted"},
			rcptCase{name: "Connect RELAY client needs no whitelist", client: "127.0.0.1", from: op009, rcpt: plmn001, ruleLike: "access:2:"},
		))
	})
}

func TestRelayToLocalAndVirtualDomains(t *testing.T) {
	p := mustParse(t, map[string]string{
		"local-host-names": "# ours\nlocal.example\n",
		"virtusertable":    "info@virt.example  someone@elsewhere.example\n",
		"access":           "To:nope.local.example REJECT\n",
		"settings":         "from_whitelist = true\n",
	})
	runRcptCases(t, p, []rcptCase{
		{name: "local-host-names domain", client: "198.51.100.1", rcpt: "u@LOCAL.example", ruleLike: "=local-host-names:2: local.example"},
		{name: "local domain needs no whitelist", client: "198.51.100.1", from: "x@y.example", rcpt: "u@local.example", ruleLike: "local-host-names:2:"},
		{name: "subdomain of a local domain is not local", client: "198.51.100.1", rcpt: "u@a.local.example", code: 550, enh: "5.7.1", text: "<u@a.local.example>... Relaying denied"},
		{name: "To REJECT applies to local domains", client: "198.51.100.1", rcpt: "u@nope.local.example", code: 550, enh: "5.7.1", text: "<u@nope.local.example>... Access denied"},
		{name: "virtusertable domain", client: "198.51.100.1", rcpt: "anyone@virt.example", ruleLike: "=virtusertable:1: virtual domain virt.example"},
	})
	if !p.IsLocal("Local.Example.") || p.IsLocal("virt.example") {
		t.Error("IsLocal wrong")
	}
}

func TestEmptyPolicyRelaysForNobody(t *testing.T) {
	p := Empty()
	for _, c := range []Client{{Addr: netip.MustParseAddr("127.0.0.1")}, {Addr: netip.MustParseAddr("10.0.0.1"), Hostname: "localhost"}, {}} {
		v := p.CheckRcpt(c, "a@b.example", "x@y.example")
		if v.Reject == nil || v.Reject.Code != 550 || v.Rule != "no access entry grants relay" {
			t.Errorf("client %+v: verdict %+v", c, v)
		}
	}
	if p.NeedsClientHostname() || p.Mailertable == nil || p.Mailertable.Len() != 0 || p.Version == "" {
		t.Errorf("empty policy: %+v", p)
	}
	e := p.Expand("x@y.example")
	if len(e.Addrs) != 1 || e.Addrs[0] != "x@y.example" || e.Reject != nil {
		t.Errorf("Expand on empty policy: %+v", e)
	}
	q := mustParse(t, nil)
	if q.Version != p.Version {
		t.Errorf("Empty().Version %s != Parse(nil).Version %s", p.Version, q.Version)
	}
}
