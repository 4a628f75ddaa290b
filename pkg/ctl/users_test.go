package ctl_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	msgdkim "github.com/emersion/go-msgauth/dkim"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mailfwd/mailfwd/pkg/ctl"
	"github.com/mailfwd/mailfwd/pkg/dkim"
	"github.com/mailfwd/mailfwd/pkg/dnsquery"
	"github.com/mailfwd/mailfwd/pkg/policy"
	"github.com/mailfwd/mailfwd/pkg/smtpauth"
	"github.com/mailfwd/mailfwd/pkg/testenv"
)

// runCtlIn runs mailfwdctl in-process with stdin.
func runCtlIn(t *testing.T, stdin string, want int, args ...string) ctlResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var out, errOut bytes.Buffer
	code := ctl.ExecuteIO(ctx, args, strings.NewReader(stdin), &out, &errOut)
	r := ctlResult{code: code, out: out.String(), errOut: errOut.String()}
	if code != want {
		t.Fatalf("mailfwdctl %s: want exit %d, got %s", strings.Join(args, " "), want, r)
	}
	return r
}

func verifyUser(t *testing.T, users *smtpauth.Users, name, pw string) bool {
	t.Helper()
	_, err := smtpauth.NewVerifier(1).Verify(context.Background(), users, name, pw)
	return err == nil
}

// TestUsersDir runs the users commands on a local policy directory.
func TestUsersDir(t *testing.T) {
	t.Setenv("MAILFWD_POLICY_DIR", "")
	dir := t.TempDir()
	// The ConfigMap half of a projected policy directory is left alone.
	if err := os.WriteFile(filepath.Join(dir, "access"), []byte("Connect:10 RELAY\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	d := []string{"--dir", dir}
	users := func(args ...string) []string { return append(append([]string{"users"}, args...), d...) }

	r := runCtlIn(t, "app1-secret\n", 0, users("add", "app1", "--sender", "example.com", "--sender", "alerts@example.net", "--password-stdin")...)
	mustContain(t, "add", r.out, "user app1: added (argon2id), may send as example.com,alerts@example.net", "directory "+dir+": written")
	if strings.Contains(r.out+r.errOut, "app1-secret") {
		t.Error("the password was printed")
	}
	fi, err := os.Stat(filepath.Join(dir, "users"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("users file: %v %v", err, fi)
	}
	text, _ := os.ReadFile(filepath.Join(dir, "users"))
	if strings.Contains(string(text), "app1-secret") || !strings.Contains(string(text), "$argon2id$") {
		t.Fatalf("users file holds %q", text)
	}
	p, err := policy.LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !verifyUser(t, p.Users, "app1", "app1-secret") || verifyUser(t, p.Users, "app1", "app1-secret\n") {
		t.Fatal("the stored hash does not verify the password read from stdin")
	}

	runCtlIn(t, "x\n", 2, users("add", "app1", "--sender", "example.com", "--password-stdin")...) // exists
	runCtlIn(t, "x\n", 2, users("add", "app2", "--sender", "bad..domain", "--password-stdin")...) // bad sender
	runCtlIn(t, "x\n", 2, users("add", "app2", "--password-stdin")...)                            // no sender
	r = runCtlIn(t, "x\n", 2, users("add", "app2", "--sender", "example.com")...)                 // stdin not a terminal
	mustContain(t, "no terminal", r.errOut, "--password-stdin")
	runCtlIn(t, "\n", 2, users("add", "app2", "--sender", "example.com", "--password-stdin")...) // empty password

	before, _ := os.ReadFile(filepath.Join(dir, "users"))
	r = runCtlIn(t, "pw2\n", 0, users("add", "app2", "--sender", ".apps.example.com", "--algorithm", "bcrypt", "--password-stdin", "--dry-run")...)
	mustContain(t, "dry run", r.out, "user app2: added (bcrypt)", "not written (dry run)")
	if after, _ := os.ReadFile(filepath.Join(dir, "users")); !bytes.Equal(before, after) {
		t.Fatal("--dry-run wrote")
	}
	runCtlIn(t, "pw2\n", 0, users("add", "app2", "--sender", ".apps.example.com", "--algorithm", "bcrypt", "--password-stdin")...)

	var list []map[string]any
	r = runCtlIn(t, "", 0, users("list", "-o", "json")...)
	if err := json.Unmarshal([]byte(r.out), &list); err != nil || len(list) != 2 || list[1]["name"] != "app2" || list[1]["algorithm"] != "bcrypt" {
		t.Fatalf("list -o json: %v %s", err, r.out)
	}
	if strings.Contains(r.out, "$2") {
		t.Error("list printed a hash")
	}
	r = runCtlIn(t, "", 0, users("list")...)
	if !regexp.MustCompile(`(?m)^app1\s+argon2id\s+example.com,alerts@example.net$`).MatchString(r.out) {
		t.Errorf("list table:\n%s", r.out)
	}

	runCtlIn(t, "new-pw\n", 0, users("passwd", "APP1", "--password-stdin")...)
	runCtlIn(t, "new-pw\n", 4, users("passwd", "nobody", "--password-stdin")...)
	p, _ = policy.LoadDir(dir)
	if !verifyUser(t, p.Users, "app1", "new-pw") || verifyUser(t, p.Users, "app1", "app1-secret") || !verifyUser(t, p.Users, "app2", "pw2") {
		t.Fatal("passwd did not change exactly app1's password")
	}

	runCtlIn(t, "", 2, users("delete", "app2")...) // no --yes, no terminal
	runCtlIn(t, "", 4, users("delete", "nobody", "--yes")...)
	runCtlIn(t, "", 0, users("delete", "app2", "--yes")...)
	runCtlIn(t, "", 0, users("delete", "app1", "--yes")...)
	if _, err := os.Stat(filepath.Join(dir, "users")); !os.IsNotExist(err) {
		t.Errorf("users file left after the last user: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "access")); string(b) != "Connect:10 RELAY\n" {
		t.Errorf("the ConfigMap half was touched: %q", b)
	}

	// A users file someone edited by hand with a plain-text password is
	// refused with file:line; nothing is written.
	os.WriteFile(filepath.Join(dir, "users"), []byte("ops hunter2 example.com\n"), 0o600)
	r = runCtlIn(t, "pw\n", 5, users("add", "app3", "--sender", "example.com", "--password-stdin")...)
	mustContain(t, "plain text", r.errOut, "users:1: user ops: password: not a bcrypt")
	if strings.Contains(r.errOut, "hunter2") {
		t.Error("the error quotes the password")
	}
}

// TestSmarthostSecret runs users and dkim against a real kube-apiserver,
// then signs a message with the key from the Secret and verifies it
// against the TXT record keygen printed, served by the loopback DNS.
func TestSmarthostSecret(t *testing.T) {
	k, cs := kubeWithNamespace(t, testNamespace)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn := []string{"--kubeconfig", k.Kubeconfig, "-n", testNamespace}
	secret := func() *corev1.Secret {
		t.Helper()
		s, err := cs.CoreV1().Secrets(testNamespace).Get(ctx, "mailfwd-policy-secret", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}

	r := runCtlIn(t, "s3cret\n", 0, append([]string{"users", "add", "app1", "--sender", "example.com", "--password-stdin"}, conn...)...)
	mustContain(t, "users add", r.out, "Secret mail/mailfwd-policy-secret: written")
	s := secret()
	if s.Type != corev1.SecretTypeOpaque || len(s.Data) != 1 || !strings.HasPrefix(string(s.Data["users"]), "app1\t$argon2id$") {
		t.Fatalf("Secret: %v %q", s.Type, s.Data)
	}

	// --dry-run writes nothing.
	rv := s.ResourceVersion
	runCtlIn(t, "", 0, append([]string{"dkim", "keygen", "--domain", "example.com", "--selector", "s1", "--dry-run"}, conn...)...)
	if secret().ResourceVersion != rv {
		t.Fatal("dkim keygen --dry-run wrote")
	}
	r = runCtlIn(t, "", 0, append([]string{"dkim", "keygen", "--domain", "example.com", "--selector", "s1"}, conn...)...)
	mustContain(t, "keygen", r.out, "dkim: rsa key for example.com, selector s1: added", "s1._domainkey.example.com. IN TXT (")
	runCtlIn(t, "", 2, append([]string{"dkim", "keygen", "--domain", "example.com", "--selector", "s2"}, conn...)...) // exists, no --force
	r2 := runCtlIn(t, "", 0, append([]string{"dkim", "keygen", "--domain", "example.org", "--selector", "ed", "--algorithm", "ed25519"}, conn...)...)
	s = secret()
	if len(s.Data) != 2 || !strings.HasPrefix(string(s.Data["users"]), "app1\t") {
		t.Fatalf("keygen disturbed the users key: %q", s.Data)
	}
	var views []map[string]string
	r3 := runCtlIn(t, "", 0, append([]string{"dkim", "list", "-o", "json"}, conn...)...)
	if err := json.Unmarshal([]byte(r3.out), &views); err != nil || len(views) != 2 || views[1]["algorithm"] != "ed25519" {
		t.Fatalf("dkim list: %v %s", err, r3.out)
	}

	// Mount-equivalent: the Secret's keys as a policy directory.
	dir := t.TempDir()
	for k, v := range s.Data {
		os.WriteFile(filepath.Join(dir, k), v, 0o600)
	}
	p, err := policy.LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !verifyUser(t, p.Users, "app1", "s3cret") {
		t.Error("password from the Secret does not verify")
	}
	zone := zoneLine(t, r.out) + "\n" + zoneLine(t, r2.out) + "\n"
	dns := testenv.StartDNS(t, zone)
	q := &dnsquery.Client{Servers: []string{dns.Addr}}
	opts := &msgdkim.VerifyOptions{LookupTXT: func(n string) ([]string, error) { return q.TXT(ctx, n) }}
	for _, from := range []string{"a@example.com", "b@example.org"} {
		msg := "From: " + from + "\r\nTo: c@example.net\r\nSubject: hi\r\n\r\nhello\r\n"
		sg := dkim.NewSigner(p.DKIM, dkim.Options{})
		sg.Write([]byte(msg))
		if err := sg.Close(); err != nil || sg.Header() == "" {
			t.Fatalf("%s: not signed: %v %s", from, err, sg.Reason())
		}
		vs, err := msgdkim.VerifyWithOptions(strings.NewReader(sg.Header()+msg), opts)
		if err != nil || len(vs) != 1 || vs[0].Err != nil {
			t.Errorf("%s: the printed TXT record does not verify the signature: %v %+v", from, err, vs)
		}
	}

	// A hand-edited Secret with a plain-text password: refused, not written.
	s.Data["users"] = []byte("app1 hunter2 example.com\n")
	if _, err := cs.CoreV1().Secrets(testNamespace).Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	rv = secret().ResourceVersion
	r = runCtlIn(t, "pw\n", 5, append([]string{"users", "add", "app2", "--sender", "example.com", "--password-stdin"}, conn...)...)
	mustContain(t, "refused", r.errOut, "users:1: user app1: password: not a bcrypt")
	if secret().ResourceVersion != rv {
		t.Error("an invalid Secret was written")
	}
}

// zoneLine picks the TXT zone line keygen printed.
func zoneLine(t *testing.T, out string) string {
	t.Helper()
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "._domainkey.") {
			return l
		}
	}
	t.Fatalf("no zone line in:\n%s", out)
	return ""
}

// TestPolicyCheckSmarthost: an unknown TLS level and a plain-text password
// are policy check errors with file:line; the Secret's keys can be checked
// as files or in a directory.
func TestPolicyCheckSmarthost(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write("tls_policy", "[email-smtp.eu-west-1.amazonaws.com]:587 secure\nexample.com verfy\n")
	r := mustCtl(t, ctl.ExitInvalid, "policy", "check", filepath.Join(dir, "tls_policy"))
	mustContain(t, "tls level", r.errOut, `tls_policy:2: example.com: unknown TLS level "verfy" (one of none, may, encrypt, verify, secure)`)
	write("tls_policy", "[email-smtp.eu-west-1.amazonaws.com]:587 secure\n. may\n")
	write("users", "app1 hunter2 example.com\n")
	r = mustCtl(t, ctl.ExitInvalid, "policy", "check", dir)
	mustContain(t, "users", r.errOut, "users:1: user app1: password: not a bcrypt")
	h, err := smtpauth.HashBcrypt("pw", smtpauth.MinBcryptCost)
	if err != nil {
		t.Fatal(err)
	}
	write("users", "app1 "+h+" example.com\n")
	r = mustCtl(t, 0, "policy", "check", filepath.Join(dir, "tls_policy"), filepath.Join(dir, "users"))
	mustContain(t, "valid", r.out, "tls_policy (2 entries)", "users (1 entries)")
}
