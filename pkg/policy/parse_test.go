package policy

import (
	"errors"
	"strings"
	"testing"

	"github.com/mailfwd/mailfwd/pkg/route"
)

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name  string
		files map[string]string
		want  []string // each must appear in the error
	}{
		{"unknown action", map[string]string{"access": "# c\nTo:example.com RELAY\n\nTo:example.org RELAYY\n"}, []string{`access:4: unknown action "RELAYY"`}},
		{"missing action", map[string]string{"access": "Connect:10.1.2.3\n"}, []string{"access:1:", "has no action"}},
		{"trailing junk", map[string]string{"access": "To:example.com RELAY now\n"}, []string{"access:1:", `unexpected "now"`}},
		{"unknown tag", map[string]string{"access": "Too:example.com RELAY\n"}, []string{"access:1:", `unknown tag "Too:"`}},
		{"unsupported sendmail tag", map[string]string{"access": "Spam:abuse@ FRIEND\n"}, []string{"access:1:", "tag Spam: is not supported"}},
		{"ERROR without code", map[string]string{"access": "To:x.example ERROR:go away\n"}, []string{"access:1:", "no reply code"}},
		{"ERROR code class mismatch", map[string]string{"access": "To:x.example ERROR:4.7.1:550 no\n"}, []string{"access:1:", "does not match"}},
		{"ERROR unbalanced quote", map[string]string{"access": "To:x.example ERROR:\"550 no\n"}, []string{"access:1:", "unbalanced quote"}},
		{"bad CIDR", map[string]string{"access": "Connect:10.0.0.0/33 RELAY\n"}, []string{"access:1:", "invalid network"}},
		{"bad IPv4 prefix", map[string]string{"access": "Connect:10.300 RELAY\n"}, []string{"access:1:", "invalid IPv4 prefix"}},
		{"bad domain", map[string]string{"access": "To:exa_mple RELAY\n"}, []string{"access:1:", "bad host or domain"}},
		{"Connect with address", map[string]string{"access": "Connect:a@b.example RELAY\n"}, []string{"access:1:", "not \"a@b.example\""}},
		{"duplicate key", map[string]string{"access": "To:Example.com RELAY\nto:example.com. REJECT\n"}, []string{"access:2: duplicate entry", "first on line 1"}},
		{"same network twice", map[string]string{"access": "Connect:10.70 RELAY\nConnect:10.70.0.0/16 REJECT\n"}, []string{"access:2:", "same network as line 1"}},
		{"tagged and untagged same key is fine, untagged twice is not", map[string]string{"access": "To:a.example OK\na.example OK\nA.example REJECT\n"}, []string{"access:3: duplicate entry"}},

		{"mailertable bad rhs", map[string]string{"mailertable": "example.com smtp:[10.1.1.1]\nexample.org foo:bar\n"}, []string{"mailertable:2:", "unknown mailer"}},
		{"mailertable no rhs", map[string]string{"mailertable": "example.com\n"}, []string{"mailertable:1:", "has no route"}},
		{"mailertable duplicate", map[string]string{"mailertable": ".example.com smtp:a.example\n.EXAMPLE.com smtp:b.example\n"}, []string{"mailertable:2: duplicate entry"}},
		{"mailertable bad domain", map[string]string{"mailertable": "exa mple\n"}, []string{"mailertable:1:"}},

		{"aliases program", map[string]string{"aliases": "a: b@example.com\nlist: x@example.com,\n  \"|/usr/bin/procmail\"\n"}, []string{"aliases:3:", "program targets (|command) are not supported by a forwarder"}},
		{"aliases file", map[string]string{"aliases": "a: /var/log/mail\n"}, []string{"aliases:1:", "file targets (/path) are not supported"}},
		{"aliases include", map[string]string{"aliases": "a: :include:/etc/mail/list\n"}, []string{"aliases:1:", ":include: lists are not supported"}},
		{"aliases backslash", map[string]string{"aliases": "a: \\a, b@example.com\n"}, []string{"aliases:1:", "local mailbox delivery"}},
		{"aliases continuation first", map[string]string{"aliases": "  x@example.com\n"}, []string{"aliases:1:", "continuation line"}},
		{"aliases no colon", map[string]string{"aliases": "a b@example.com\n"}, []string{"aliases:1:", "expected \"name: address"}},
		{"aliases empty", map[string]string{"aliases": "a:\nb: c@example.com\n"}, []string{"aliases:1:", `alias "a" has no targets`}},
		{"aliases missing comma", map[string]string{"aliases": "a: b@example.com c@example.com\n"}, []string{"aliases:1:", "missing comma"}},
		{"aliases duplicate", map[string]string{"aliases": "a: b@example.com\nA: c@example.com\n"}, []string{"aliases:2:", `duplicate alias "a"`}},
		{"aliases bad address", map[string]string{"aliases": "a: b@exa_mple\n"}, []string{"aliases:1:", "b@exa_mple"}},

		{"virtusertable no at", map[string]string{"virtusertable": "info example.net\n"}, []string{"virtusertable:1:", "key must be user@domain"}},
		{"virtusertable no target", map[string]string{"virtusertable": "info@example.com\n"}, []string{"virtusertable:1:", "has no target"}},
		{"virtusertable list", map[string]string{"virtusertable": "info@example.com a@example.net,b@example.net\n"}, []string{"virtusertable:1:", "one address"}},
		{"virtusertable bad substitution", map[string]string{"virtusertable": "@example.com %4@example.net\n"}, []string{"virtusertable:1:", "unknown substitution %4"}},
		{"virtusertable bad error", map[string]string{"virtusertable": "a@example.com error:nouser 450 later\n"}, []string{"virtusertable:1:", "does not match"}},
		{"virtusertable duplicate", map[string]string{"virtusertable": "@example.com a@example.net\n@EXAMPLE.COM b@example.net\n"}, []string{"virtusertable:2: duplicate entry"}},
		{"virtusertable redirect without domain", map[string]string{"virtusertable": "a@example.com new.REDIRECT\n"}, []string{"virtusertable:1:", "redirect target"}},

		{"local-host-names bad", map[string]string{"local-host-names": "example.com\nnot_a_domain\n"}, []string{"local-host-names:2:", "bad domain"}},
		{"settings unknown", map[string]string{"settings": "from_whitelist = true\nfrom_whitelst = true\n"}, []string{"settings:2:", `unknown setting "from_whitelst"`}},
		{"settings bad value", map[string]string{"settings": "from_whitelist = yes\n"}, []string{"settings:1:", "true or false"}},
		{"settings twice", map[string]string{"settings": "from_whitelist = true\nfrom_whitelist = false\n"}, []string{"settings:2:", "set twice"}},
		{"settings syntax", map[string]string{"settings": "from_whitelist\n"}, []string{"settings:1:", "name = value"}},

		{"unknown key", map[string]string{"acess": "To:example.com RELAY\n"}, []string{`unknown policy key "acess"`}},
		{"invalid UTF-8", map[string]string{"access": "To:ex\xffample.com RELAY\n"}, []string{"access:1:", "not valid UTF-8"}},
		{"control character", map[string]string{"access": "To:example.com ERROR:550 a\x00b\n"}, []string{"access:1:", "control character"}},
		{"errors from several files all reported", map[string]string{"access": "To:a.example RELAYY\n", "aliases": "a: |prog\n"}, []string{"access:1:", "aliases:1:"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Parse(toBytes(tc.files))
			if err == nil {
				t.Fatalf("Parse succeeded (%+v), want error", p)
			}
			if p != nil {
				t.Fatal("Parse returned a policy along with an error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			var pe *ParseError
			if !errors.As(err, &pe) {
				t.Errorf("error %T is not a *ParseError", err)
			}
		})
	}
}

// One bad file means no policy at all, even when the others are fine.
func TestParseNeverHalfApplied(t *testing.T) {
	good := map[string]string{
		"access":      "To:example.com RELAY\n",
		"mailertable": "example.com smtp:[10.1.1.1]\n",
	}
	if _, err := Parse(toBytes(good)); err != nil {
		t.Fatal(err)
	}
	bad := map[string]string{"access": good["access"], "mailertable": good["mailertable"], "aliases": "x: |/bin/sh\n"}
	p, err := Parse(toBytes(bad))
	if err == nil || p != nil {
		t.Fatalf("Parse with a bad aliases file = %v, %v", p, err)
	}
}

func TestMailertable(t *testing.T) {
	p := mustParse(t, map[string]string{"mailertable": `# MMS interconnects
mms.mnc002.mcc238.gprs   smtp:[10.1.1.1]:[10.1.1.2]
.example.com             esmtp:[relay.example.com]:2525   # internal
Example.ORG              error:5.1.2:"No such # domain"
.                        relay:smarthost.example.net
`})
	if p.Mailertable.Len() != 4 {
		t.Fatalf("Len = %d", p.Mailertable.Len())
	}
	e, ok := p.Mailertable.Lookup("mms.mnc002.mcc238.gprs")
	if !ok || len(e.Hosts) != 2 || e.Hosts[0] != (route.Host{Name: "10.1.1.1", Literal: true}) || e.Hosts[1] != (route.Host{Name: "10.1.1.2", Literal: true}) {
		t.Errorf("mms route = %+v", e)
	}
	e, _ = p.Mailertable.Lookup("a.b.example.com")
	if len(e.Hosts) != 1 || e.Hosts[0] != (route.Host{Name: "relay.example.com", Literal: true, Port: 2525}) {
		t.Errorf(".example.com route = %+v", e)
	}
	e, _ = p.Mailertable.Lookup("example.org")
	if e.Error == nil || e.Error.Enhanced != "5.1.2" || e.Error.Msg != "No such # domain" {
		t.Errorf("error route = %+v", e)
	}
	e, _ = p.Mailertable.Lookup("anything.example")
	if len(e.Hosts) != 1 || e.Hosts[0].Name != "smarthost.example.net" {
		t.Errorf("default route = %+v", e)
	}
	checkRoundTrip(t, p)
}

func fullFiles() map[string]string {
	return map[string]string{
		"access":           actionsAccess + precedenceAccess[strings.Index(precedenceAccess, "Connect:172"):] + "Connect:2001:db8:1::/48 SKIP\n10.9 DISCARD\n",
		"mailertable":      "mms.mnc002.mcc238.gprs smtp:[10.1.1.1]:[10.1.1.2]\n.example.com esmtp:[relay.example.com]:2525 # c\nexample.org error:5.1.2:No such domain\n. relay:smarthost.example.net\n",
		"aliases":          expandAliases,
		"virtusertable":    expandVirtusertable,
		"local-host-names": "# ours\nlocal.example\nlocal2.example other.local.example\nBÜCHER.example\n",
		"settings":         "from_whitelist = true # patched\n",
	}
}

func TestFilesRoundTrip(t *testing.T) {
	p := mustParse(t, fullFiles())
	checkRoundTrip(t, p)
	checkRoundTrip(t, mustParse(t, map[string]string{"access": mmsAccess}))
	checkRoundTrip(t, Empty())
	files := p.Files()
	for _, k := range Keys() {
		if _, ok := files[k]; !ok {
			t.Errorf("Files() lacks %s", k)
		}
	}
	if !strings.Contains(string(files["access"]), "\nConnect:172.16.0.0/12\tRELAY\n") || strings.HasPrefix(string(files["access"]), "#") || strings.Contains(string(files["access"]), "\n#") {
		t.Errorf("canonical access:\n%s", files["access"])
	}
	if !strings.Contains(string(files["local-host-names"]), "xn--bcher-kva.example\n") {
		t.Errorf("canonical local-host-names:\n%s", files["local-host-names"])
	}
	// Version is the hash of the input, stable and sensitive to change.
	q := mustParse(t, fullFiles())
	if p.Version != q.Version || len(p.Version) != 12 {
		t.Errorf("Version %q vs %q", p.Version, q.Version)
	}
	f := fullFiles()
	f["settings"] = "from_whitelist = false\n"
	if r := mustParse(t, f); r.Version == p.Version {
		t.Error("Version unchanged after a change")
	}
}
