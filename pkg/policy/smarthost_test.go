package policy

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/mailfwd/mailfwd/pkg/dkim"
	"github.com/mailfwd/mailfwd/pkg/smtpauth"
	"github.com/mailfwd/mailfwd/pkg/tlspolicy"
)

// A real argon2id hash of "app1-password" (m=8 MiB, t=1, p=1) and a bcrypt
// hash (cost 10) of "app2-password".
var (
	app1Hash = mustHash(smtpauth.Argon2id)
	app2Hash = mustHash(smtpauth.Bcrypt)
)

func mustHash(alg smtpauth.Algorithm) string {
	var h string
	var err error
	if alg == smtpauth.Bcrypt {
		h, err = smtpauth.HashBcrypt("app2-password", smtpauth.MinBcryptCost)
	} else {
		h, err = smtpauth.HashArgon2id("app1-password", smtpauth.Argon2Params{Memory: smtpauth.MinArgon2Memory, Time: 1, Threads: 1, KeyLen: 32, SaltLen: 16})
	}
	if err != nil {
		panic(err)
	}
	return h
}

func TestSmarthostKeys(t *testing.T) {
	key, err := dkim.GenerateKey("ed25519")
	if err != nil {
		t.Fatal(err)
	}
	k := dkim.Key{Domain: "example.com", Selector: "s1", Signer: key}
	dkimLine, _ := k.Line()
	files := map[string]string{
		KeyUsers: "# submission users\n" +
			"app1 " + app1Hash + " example.com, alerts@example.net\n" +
			"app2 " + app2Hash + " .apps.example.com\n",
		KeyAuthinfo:  "[email-smtp.eu-west-1.amazonaws.com]:587 AKIAEXAMPLE:pass#word with space\n",
		KeyTLSPolicy: "[email-smtp.eu-west-1.amazonaws.com]:587 secure\n.  may  # default\nexample.org verify\n",
		KeyDKIM:      dkimLine + "\n",
	}
	p := mustParse(t, files)
	if p.Users.Len() != 2 {
		t.Fatalf("%d users", p.Users.Len())
	}
	v := smtpauth.NewVerifier(1)
	u, err := v.Verify(context.Background(), p.Users, "app1", "app1-password")
	if err != nil || !u.MaySend("x@example.com") || u.MaySend("x@apps.example.com") {
		t.Errorf("app1: %v", err)
	}
	d := p.TLS.Lookup(tlspolicy.Hop{Domain: "customer.example", Relay: "email-smtp.eu-west-1.amazonaws.com", Literal: true, Port: 587})
	if d.Level != tlspolicy.Secure || d.Auth == nil || d.Auth.Password != "pass#word with space" {
		t.Errorf("SES hop: %+v", d)
	}
	if d := p.TLS.Lookup(tlspolicy.Hop{Domain: "example.org", Port: 25}); d.Level != tlspolicy.Verify {
		t.Errorf("example.org: %s", d.Level)
	}
	if kk, ok := p.DKIM.For("example.com"); !ok || kk.Selector != "s1" {
		t.Error("dkim key missing")
	}
	// The canonical text parses to the same decisions.
	again, err := Parse(p.Files())
	if err != nil {
		t.Fatalf("Parse(Files()): %v", err)
	}
	if again.Users.Text() != p.Users.Text() || again.TLS.Lookup(tlspolicy.Hop{Domain: "example.org"}).Level != tlspolicy.Verify ||
		again.DKIM.Len() != 1 || string(again.Files()[KeyAuthinfo]) != string(p.Files()[KeyAuthinfo]) {
		t.Errorf("round trip changed the smart-host keys:\n%s", again.Files())
	}
	if Empty().Users.Len() != 0 || Empty().TLS.Lookup(tlspolicy.Hop{Domain: "x.example"}).Level != tlspolicy.May {
		t.Error("empty policy: AUTH offered or TLS not may")
	}
}

func TestSmarthostErrors(t *testing.T) {
	for _, tc := range []struct {
		key, text, want string
	}{
		{KeyUsers, "# x\napp1 s3cret example.com\n", "users:2: user app1: password: not a bcrypt"},
		{KeyUsers, "app1 " + app1Hash + " example.com\nAPP1 " + app1Hash + " example.com\n", "users:2: user app1 listed twice (first on line 1)"},
		{KeyUsers, "app1 " + app1Hash + "\n", "users:1: user app1: no allowed senders"},
		{KeyTLSPolicy, "example.com verfy\n", `tls_policy:1: example.com: unknown TLS level "verfy"`},
		{KeyTLSPolicy, ". may\n. encrypt\n", "tls_policy:2: duplicate entry ."},
		{KeyTLSPolicy, "[relay.example:25 secure\n", "tls_policy:1: unbalanced ["},
		{KeyAuthinfo, "[relay.example]:587 justauser\n", "authinfo:1: [relay.example]:587: want user:password"},
		{KeyDKIM, "example.com s1 notakey\n", "dkim:1: domain example.com selector s1: key is not base64"},
	} {
		_, err := Parse(toBytes(map[string]string{tc.key: tc.text}))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s %q: %v, want %q", tc.key, tc.text, err, tc.want)
		}
		if err != nil && tc.key == KeyAuthinfo && strings.Contains(err.Error(), "justauser") {
			t.Errorf("the error quotes the secret: %v", err)
		}
	}
}

// TestUsersHotReload: a users file with a plain-text password is refused
// with file:line and the last good users stay in force.
func TestUsersHotReload(t *testing.T) {
	dir := t.TempDir()
	writeConfigMap(t, dir, "01", map[string]string{KeyUsers: "app1 " + app1Hash + " example.com\n"})
	var errs []error
	w, err := NewWatcher(dir, time.Hour, nil, func(err error) { errs = append(errs, err) })
	if err != nil {
		t.Fatal(err)
	}
	good := w.Current().Version
	writeConfigMap(t, dir, "02", map[string]string{KeyUsers: "app1 " + app1Hash + " example.com\napp2 hunter2 example.com\n"})
	if w.poll() {
		t.Fatal("a users file with a plain-text password was loaded")
	}
	if len(errs) != 1 || !strings.Contains(errs[0].Error(), "users:2: user app2: password: not a bcrypt") || strings.Contains(errs[0].Error(), "hunter2") {
		t.Fatalf("errors: %v", errs)
	}
	if w.Current().Version != good || w.Current().Users.Len() != 1 {
		t.Fatal("last good policy not kept")
	}
	writeConfigMap(t, dir, "03", map[string]string{KeyUsers: "app1 " + app1Hash + " example.com\napp2 " + app2Hash + " example.com\n"})
	if !w.poll() || w.Current().Users.Len() != 2 {
		t.Fatal("fixed users file not loaded")
	}
}
