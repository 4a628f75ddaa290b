package policy

import (
	"strings"
	"testing"
	"time"
)

const sendersMasq = `# MASQUERADE_AS(example.com) for the internal hosts
server17.internal   example.com
.corp.internal      example.com   headers
except mail.corp.internal
exposed root
`

const sendersGeneric = `root@server17.internal   ops@example.com   headers
@d1pr0004.cpships.com    %1@cpships.com
`

func TestRewriteSender(t *testing.T) {
	p := mustParse(t, map[string]string{"masquerade": sendersMasq, "genericstable": sendersGeneric})
	checkRoundTrip(t, p)
	for _, c := range []struct {
		in, want string
		headers  bool
		rule     string
	}{
		{"root@server17.internal", "ops@example.com", true, "genericstable:1"},                            // genericstable wins
		{"cron@server17.internal", "cron@example.com", false, "masquerade:2"},                             // envelope only
		{"app@d1pr0004.cpships.com", "app@cpships.com", false, "genericstable:2"},                         // %1
		{"App@D1PR0004.cpships.com", "App@cpships.com", false, "genericstable:2"},                         // case of the user kept
		{"app@x.corp.internal", "app@example.com", true, "masquerade:3"},                                  // .domain covers hosts under it
		{"app@corp.internal", "app@example.com", true, "masquerade:3"},                                    // and the domain itself
		{"app@mail.corp.internal", "app@mail.corp.internal", false, ""},                                   // exception
		{"root@x.corp.internal", "root@x.corp.internal", false, ""},                                       // exposed user
		{"app@other.example", "app@other.example", false, ""},                                             // not covered
		{"+4512345678/TYPE=PLMN@server17.internal", "+4512345678/TYPE=PLMN@server17.internal", false, ""}, // PLMN never
		{"", "", false, ""}, // null sender
	} {
		got := p.RewriteSender(c.in)
		if got.Addr != c.want || got.Headers != c.headers || !strings.HasPrefix(got.Rule, c.rule) || got.Changed != (c.in != c.want) {
			t.Errorf("RewriteSender(%q) = %+v, want %q headers=%t rule %q", c.in, got, c.want, c.headers, c.rule)
		}
	}
}

func TestSenderKeysRefuseBadLines(t *testing.T) {
	for _, c := range []struct{ key, text, want string }{
		{"masquerade", "server17.internal\n", "masquerade:1: expected"},
		{"masquerade", "bad..host example.com\n", "masquerade:1: bad host"},
		{"masquerade", "a.example b.example\na.example c.example\n", "masquerade:2: duplicate"},
		{"masquerade", "except\n", "masquerade:1: except needs"},
		{"masquerade", "exposed root@x\n", "masquerade:1: exposed takes user names"},
		{"genericstable", "root new@example.com\n", "genericstable:1: \"root\": a bare user"},
		{"genericstable", "root@a.example %1@b.example\n", "genericstable:1: %1 stands for"},
		{"genericstable", "@a.example not-an-address\n", "genericstable:1: bad new address"},
		{"senderroutes", "@a.example error:5.7.1:no\n", "senderroutes:1: @a.example: a sender route names a relay"},
		{"senderroutes", "a.example [relay.example]\n", "senderroutes:1: \"a.example\": expected"},
		{"senderroutes", "@a.example bogus:relay\n", "senderroutes:1: @a.example: unknown mailer"},
		{"srs", "short\n", "srs:1: an SRS secret is one word"},
		{"srs", "0123456789abcdef0123\n\x00settings", "srs_domain is not set"},
		{"settings", "srs_domain = fwd.example\n\x00srs", "holds no secret"},
		{"settings", "srs_max_age = soon\n", "settings:1: srs_max_age"},
	} {
		// "TEXT\x00OTHER": OTHER is present, empty (both halves of the policy).
		text, other, _ := strings.Cut(c.text, "\x00")
		files := map[string]string{c.key: text}
		if other != "" {
			files[other] = ""
		}
		_, err := Parse(toBytes(files))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s %q: err = %v, want %q", c.key, c.text, err, c.want)
		}
	}
}

func TestSenderRoute(t *testing.T) {
	p := mustParse(t, map[string]string{"senderroutes": `billing@example.com   smtp:[relay-b.example]:587
auth:alice              [relay-a.example]:587
@example.com            smtp:[relay-c.example] mailertable-first
`})
	checkRoundTrip(t, p)
	for _, c := range []struct{ sender, user, relay string }{
		{"billing@example.com", "alice", "smtp:[relay-b.example]:587"}, // the address beats the AUTH user
		{"Billing@EXAMPLE.com", "", "smtp:[relay-b.example]:587"},
		{"x@example.com", "alice", "[relay-a.example]:587"}, // the AUTH user beats @domain
		{"x@example.com", "", "smtp:[relay-c.example]"},
		{"x@other.example", "alice", "[relay-a.example]:587"},
		{"", "alice", "[relay-a.example]:587"}, // a DSN submitted by alice
		{"x@other.example", "", ""},
	} {
		r, ok := p.SenderRoute(c.sender, c.user)
		if r.Relay != c.relay || ok != (c.relay != "") {
			t.Errorf("SenderRoute(%q, %q) = %+v, %t; want %q", c.sender, c.user, r, ok, c.relay)
		}
	}
	if r, _ := p.SenderRoute("x@example.com", ""); !r.MailertableFirst || len(r.Entry.Hosts) != 1 || r.Entry.Hosts[0].Name != "relay-c.example" {
		t.Errorf("entry: %+v", r)
	}
}

func TestSRSPolicy(t *testing.T) {
	p := mustParse(t, map[string]string{
		"settings": "srs_domain = fwd.example\nsrs_max_age = 10d\n",
		"srs":      "new-secret-0123456789\nold-secret-0123456789\n",
	})
	checkRoundTrip(t, p)
	r := p.SRS()
	if r == nil || r.Domain() != "fwd.example" {
		t.Fatalf("SRS() = %v", r)
	}
	a, err := r.Forward("alice", "sender.example")
	if err != nil {
		t.Fatal(err)
	}
	if got, err := r.Reverse(a); err != nil || got != "alice@sender.example" {
		t.Fatalf("Reverse = %q, %v", got, err)
	}
	r.SetClock(func() time.Time { return time.Now().Add(11 * 24 * time.Hour) })
	if _, err := r.Reverse(a); err == nil {
		t.Fatal("srs_max_age 10d: an 11-day-old address still reverses")
	}
	// One half alone (mailfwdctl validating the ConfigMap) is not refused.
	if _, err := Parse(toBytes(map[string]string{"settings": "srs_domain = fwd.example\n"})); err != nil {
		t.Fatalf("the ConfigMap half alone: %v", err)
	}
	if Empty().SRS() != nil {
		t.Fatal("SRS on without a policy")
	}
}

func FuzzParseSenders(f *testing.F) {
	f.Add([]byte(sendersMasq), []byte(sendersGeneric), []byte("@example.com [relay.example]:587\nauth:bob relay.example mailertable-first\n"))
	f.Add([]byte(".x.example y.example headers\nexcept a.x.example\n"), []byte("@a.example %1@b.example headers\n"), []byte("a@b.example smtp:[10.0.0.1]\n"))
	f.Fuzz(func(t *testing.T, masq, generic, routes []byte) {
		p, err := Parse(map[string][]byte{"masquerade": masq, "genericstable": generic, "senderroutes": routes})
		if err != nil {
			return
		}
		checkRoundTrip(t, p)
		for _, text := range [][]byte{masq, generic, routes} {
			for _, l := range strings.Split(string(text), "\n") {
				k, _ := fields(l)
				for _, a := range []string{k, "user" + k, "user@" + strings.TrimPrefix(k, ".")} {
					r := p.RewriteSender(a)
					if r.Changed != (r.Addr != a) && !strings.EqualFold(r.Addr, a) {
						t.Fatalf("RewriteSender(%q) = %+v", a, r)
					}
					if r.Changed && r.Rule == "" {
						t.Fatalf("RewriteSender(%q) changed without a rule", a)
					}
					if isPLMN(a) && r.Changed {
						t.Fatalf("PLMN address %q rewritten", a)
					}
					p.SenderRoute(a, "bob")
				}
			}
		}
	})
}

func TestEnvelopeSender(t *testing.T) {
	p := mustParse(t, map[string]string{
		"masquerade":       sendersMasq,
		"local-host-names": "example.com\n",
		"settings":         "srs_domain = fwd.example\n",
		"srs":              "new-secret-0123456789\n",
	})
	for _, c := range []struct {
		from      string
		forwarded bool
		prefix    string
		steps     int
	}{
		{"cron@server17.internal", false, "cron@example.com", 1},
		{"cron@server17.internal", true, "cron@example.com", 1}, // masqueraded into a local domain: no SRS
		{"alice@sender.example", true, "SRS0=", 1},
		{"alice@sender.example", false, "alice@sender.example", 0},
		{"SRS0=abcd=AB=x.example=y@fwd.example", true, "SRS0=abcd", 0}, // already ours
		{"", true, "", 0},
	} {
		got, steps := p.EnvelopeSender(c.from, c.forwarded)
		if !strings.HasPrefix(got, c.prefix) || len(steps) != c.steps {
			t.Errorf("EnvelopeSender(%q, %t) = %q %v", c.from, c.forwarded, got, steps)
		}
	}
	if !Forwarded("a@x.example", "b@y.example") || Forwarded("a@x.example", "b@X.example") {
		t.Error("Forwarded")
	}
}
