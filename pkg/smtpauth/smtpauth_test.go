package smtpauth

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// cheapArgon2 keeps tests fast while staying inside the accepted bounds.
var cheapArgon2 = Argon2Params{Memory: MinArgon2Memory, Time: 1, Threads: 1, KeyLen: 32, SaltLen: 16}

func mustArgon2(t testing.TB, pw string) string {
	t.Helper()
	h, err := hashArgon2id(pw, cheapArgon2)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func mustBcrypt(t testing.TB, pw string) string {
	t.Helper()
	b, err := bcrypt.GenerateFromPassword([]byte(pw), MinBcryptCost)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestParseHash(t *testing.T) {
	a := mustArgon2(t, "s3cret")
	b := mustBcrypt(t, "s3cret")
	for i, enc := range []string{a, b, strings.Replace(b, "$2a$", "$2b$", 1), strings.Replace(b, "$2a$", "$2y$", 1)} {
		h, err := ParseHash(enc)
		if err != nil {
			t.Fatalf("ParseHash(%s): %v", enc, err)
		}
		if i > 1 {
			continue // the same bcrypt hash under another prefix: parsing is enough
		}
		if !h.Check("s3cret") || h.Check("s3cret ") || h.Check("") {
			t.Errorf("%s: Check gives wrong answers", h.Algorithm)
		}
	}
	bad := map[string]string{
		"s3cret":     "plain-text",
		"{SHA}abc":   "plain-text",
		"$1$abc$def": "plain-text",
		"$argon2i$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$a2V5a2V5a2V5a2V5a2V5a2V5":    "only argon2id",
		"$argon2id$v=18$m=65536,t=3,p=4$c2FsdHNhbHQ$a2V5a2V5a2V5a2V5a2V5a2V5":   "version",
		"$argon2id$v=19$m=4194304,t=3,p=4$c2FsdHNhbHQ$a2V5a2V5a2V5a2V5a2V5a2V5": "memory",
		"$argon2id$v=19$m=65536,t=100,p=4$c2FsdHNhbHQ$a2V5a2V5a2V5a2V5a2V5a2V5": "time",
		"$argon2id$v=19$m=65536,t=3$c2FsdHNhbHQ$a2V5a2V5a2V5a2V5a2V5a2V5":       "required",
		"$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$!!":                         "base64",
		strings.Replace(b, "$10$", "$04$", 1):                                   "cost",
		b[:50]:                                                                  "malformed bcrypt",
	}
	for enc, want := range bad {
		_, err := ParseHash(enc)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseHash(%q) = %v, want an error containing %q", enc, err, want)
		}
		if want == "plain-text" && !errors.Is(err, ErrPlainText) {
			t.Errorf("ParseHash(%q): want ErrPlainText, got %v", enc, err)
		}
	}
}

func TestHashRoundTrip(t *testing.T) {
	// The default argon2id parameters are inside the accepted bounds.
	if enc, err := Hash(Argon2id, "x"); err != nil {
		t.Fatal(err)
	} else if _, err := ParseHash(enc); err != nil {
		t.Fatalf("default argon2id parameters refused: %v", err)
	}
	if bcryptCost < MinBcryptCost || bcryptCost > MaxBcryptCost {
		t.Fatalf("default bcrypt cost %d outside the accepted bounds", bcryptCost)
	}
	defer func(a Argon2Params, c int) { DefaultArgon2, bcryptCost = a, c }(DefaultArgon2, bcryptCost)
	DefaultArgon2, bcryptCost = cheapArgon2, MinBcryptCost
	for _, alg := range []Algorithm{Argon2id, Bcrypt} {
		enc, err := Hash(alg, "correct horse")
		if err != nil {
			t.Fatal(err)
		}
		h, err := ParseHash(enc)
		if err != nil {
			t.Fatalf("%s: the hash Hash made does not parse: %v", alg, err)
		}
		if h.Algorithm != alg || !h.Check("correct horse") || h.Check("correct horsE") {
			t.Errorf("%s: round trip broken", alg)
		}
	}
	if _, err := Hash(Bcrypt, strings.Repeat("x", 73)); err == nil {
		t.Error("bcrypt accepted a password it would truncate")
	}
	if _, err := Hash(Argon2id, ""); err == nil {
		t.Error("empty password accepted")
	}
}

func TestParseUserLine(t *testing.T) {
	h := mustArgon2(t, "pw")
	u, err := ParseUserLine("App1 " + h + " example.com,.Sub.Example.ORG  Alerts@Example.NET <>")
	if err != nil {
		t.Fatal(err)
	}
	if u.Name != "app1" {
		t.Errorf("name %q", u.Name)
	}
	wantSenders := []string{"example.com", ".sub.example.org", "alerts@example.net", "<>"}
	if strings.Join(u.Senders, " ") != strings.Join(wantSenders, " ") {
		t.Errorf("senders %q, want %q", u.Senders, wantSenders)
	}
	cases := map[string]bool{
		"x@example.com":                   true,
		"x@EXAMPLE.com":                   true,
		"x@sub.example.com":               false, // example.com is exact
		"x@a.sub.example.org":             true,
		"x@sub.example.org":               false, // .sub.example.org is subdomains only
		"alerts@example.net":              true,
		"ALERTS@example.net":              true,
		"other@example.net":               false,
		"":                                true, // <>
		"x@example.com.evil":              false,
		"x@evilexample.com":               false,
		"x@evil.sub.example.org.attacker": false,
	}
	for sender, want := range cases {
		if got := u.MaySend(sender); got != want {
			t.Errorf("MaySend(%q) = %v, want %v", sender, got, want)
		}
	}
	for line, want := range map[string]string{
		"bob":                         "want NAME HASH",
		"bob s3cret example.com":      "plain-text",
		"bob " + h:                    "no allowed senders",
		"bob " + h + " @example.com":  "without @",
		"b/b " + h + " example.com":   "only letters",
		"bob " + h + " exa_mple..com": "sender",
	} {
		_, err := ParseUserLine(line)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseUserLine(%q) = %v, want error containing %q", line, err, want)
		}
	}
	any, err := ParseUserLine("ops " + h + " *")
	if err != nil || !any.MaySend("x@anything.example") || !any.MaySend("") {
		t.Errorf("* must allow every sender: %v", err)
	}
}

func TestVerifier(t *testing.T) {
	alice, err := ParseUserLine("alice " + mustArgon2(t, "alice-pw") + " example.com")
	if err != nil {
		t.Fatal(err)
	}
	bob, err := ParseUserLine("bob " + mustBcrypt(t, "bob-pw") + " example.com")
	if err != nil {
		t.Fatal(err)
	}
	carol, err := ParseUserLine("carol " + mustArgon2(t, "carol-pw") + " example.com")
	if err != nil {
		t.Fatal(err)
	}
	us, err := NewUsers([]User{alice, bob, carol})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewUsers([]User{alice, alice}); err == nil {
		t.Error("duplicate user accepted")
	}
	v := NewVerifier(2)
	ctx := context.Background()
	if u, err := v.Verify(ctx, us, "Alice", "alice-pw"); err != nil || u.Name != "alice" {
		t.Errorf("alice: %v", err)
	}
	if u, err := v.Verify(ctx, us, "bob", "bob-pw"); err != nil || u.Name != "bob" {
		t.Errorf("bob: %v", err)
	}
	for _, c := range [][2]string{{"alice", "bob-pw"}, {"bob", ""}, {"mallory", "alice-pw"}, {"", ""}, {"alice\x00", "alice-pw"}} {
		if _, err := v.Verify(ctx, us, c[0], c[1]); !errors.Is(err, ErrBadCredentials) {
			t.Errorf("Verify(%q, %q) = %v, want ErrBadCredentials", c[0], c[1], err)
		}
	}
	// The unknown user above was checked against a dummy of the cost most
	// users have (two argon2id at cheapArgon2, one bcrypt).
	if us.dummy.Algorithm != Argon2id || us.dummy.costKey() != alice.Hash.costKey() {
		t.Errorf("dummy hash %q, want the cost of %q", us.dummy.costKey(), alice.Hash.costKey())
	}
	// A full verifier makes a caller wait for its context.
	full := NewVerifier(1)
	full.slots <- struct{}{}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := full.Verify(cctx, us, "alice", "alice-pw"); !errors.Is(err, context.Canceled) {
		t.Errorf("full verifier: %v, want context.Canceled", err)
	}
}

func TestFailureBudget(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	b, err := NewFailureBudget(BudgetConfig{MaxFailures: 3, Window: time.Minute, MaxClients: 2, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	c1 := netip.MustParseAddr("192.0.2.1")
	for i := 1; i <= 3; i++ {
		if b.Exhausted(c1) {
			t.Fatalf("exhausted after %d failures", i-1)
		}
		n, ex := b.Fail(c1, "u1")
		if n != i || ex != (i == 3) {
			t.Fatalf("failure %d: got (%d, %v)", i, n, ex)
		}
	}
	if !b.Exhausted(c1) || b.Begin(c1, "u9") {
		t.Fatal("not exhausted after 3 failures")
	}
	// Other addresses of the same IPv6 /64 share a budget; another /64 not.
	v6a, v6b, v6c := netip.MustParseAddr("2001:db8:1:2::1"), netip.MustParseAddr("2001:db8:1:2:ffff::9"), netip.MustParseAddr("2001:db8:1:3::1")
	b.Fail(v6a, "u2")
	if n, _ := b.Fail(v6b, "u2"); n != 2 {
		t.Errorf("same /64: %d failures, want 2", n)
	}
	// MaxClients 2 (clients, and apart names): c1, v6, u1, u2 tracked;
	// v6c evicts c1, u3 evicts u1 (least recent).
	b.Fail(v6c, "u3")
	if b.Tracked() != 4 || b.Exhausted(c1) {
		t.Errorf("tracked %d, c1 exhausted %v: want 4 and c1 evicted", b.Tracked(), b.Exhausted(c1))
	}
	// Names sprayed do not push a client out.
	for i := range 10 {
		b.Fail(v6c, fmt.Sprintf("spray%d", i))
	}
	if n := b.Failures(v6c); n != 11 {
		t.Errorf("client failures after a name spray: %d, want 11", n)
	}
	// The window passes.
	now = now.Add(time.Minute)
	if b.Failures(v6a) != 0 {
		t.Error("failures outlived the window")
	}
	for _, bad := range []BudgetConfig{{MaxFailures: -1}, {MaxUserFailures: -1}, {Window: time.Millisecond}, {MaxClients: -5}} {
		if _, err := NewFailureBudget(bad); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}

// Issue 19 item 5: checks in progress count until they end; a success
// clears the user name's failures only; a name has its own budget across
// clients.
func TestFailureBudgetPerUserAndPending(t *testing.T) {
	b, err := NewFailureBudget(BudgetConfig{MaxFailures: 3, MaxUserFailures: 4})
	if err != nil {
		t.Fatal(err)
	}
	c := netip.MustParseAddr("192.0.2.1")
	for i := range 3 {
		if !b.Begin(c, "alice") {
			t.Fatalf("check %d refused", i+1)
		}
	}
	if b.Begin(c, "alice") || !b.Exhausted(c) {
		t.Fatal("a fourth check admitted while three are in progress (budget 3)")
	}
	b.End(c, "alice", true)
	b.End(c, "alice", true)
	if n, ex := b.End(c, "alice", false); n != 2 || ex {
		t.Fatalf("after a success: client failures %d, exhausted %v; want 2 kept", n, ex)
	}
	if n, ex := b.Fail(c, "bob"); n != 3 || !ex {
		t.Fatalf("third failure: (%d, %v), want (3, true): the success did not reset the client", n, ex)
	}
	// Four clients, one guess each at one name: the name's budget (4).
	for i := range 4 {
		a := netip.AddrFrom4([4]byte{198, 51, 100, byte(i + 1)})
		if !b.Begin(a, "Carol") {
			t.Fatalf("client %d refused", i+1)
		}
		b.End(a, "Carol", true)
	}
	if b.Begin(netip.MustParseAddr("198.51.100.9"), "carol") {
		t.Fatal("a fifth client guessing carol was admitted (user budget 4)")
	}
}

// TestFail2banRegex runs the documented regexes (as fail2ban expands
// <HOST>) over real slog output, including a user name crafted to look
// like a failure from another address.
func TestFail2banRegex(t *testing.T) {
	host := `(?P<host>[0-9a-fA-F:.]+)`
	for name, tc := range map[string]struct {
		re string
		h  func(*bytes.Buffer) slog.Handler
	}{
		"text": {Fail2banRegexText, func(b *bytes.Buffer) slog.Handler { return slog.NewTextHandler(b, nil) }},
		"json": {Fail2banRegexJSON, func(b *bytes.Buffer) slog.Handler { return slog.NewJSONHandler(b, nil) }},
	} {
		re := regexp.MustCompile(strings.ReplaceAll(tc.re, "<HOST>", host))
		var buf bytes.Buffer
		l := slog.New(tc.h(&buf)).With("component", "ingress")
		evil := `x msg="SMTP AUTH failed from [198.51.100.66]" level=WARN`
		LogFailure(l, netip.MustParseAddr("192.0.2.7"), "PLAIN", evil, 2, 5)
		LogFailure(l, netip.MustParseAddr("::ffff:192.0.2.8"), "LOGIN", "bob", 1, 5)
		LogFailure(l, netip.MustParseAddr("2001:db8::1"), "LOGIN", "bob", 1, 5)
		l.Warn("something else", "user", evil)
		var got []string
		for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
			if m := re.FindStringSubmatch(line); m != nil {
				got = append(got, m[1])
			}
		}
		if strings.Join(got, " ") != "192.0.2.7 192.0.2.8 2001:db8::1" {
			t.Errorf("%s: regex matched %q in:\n%s", name, got, buf.String())
		}
	}
}

func BenchmarkVerify(b *testing.B) {
	h, _ := Hash(Argon2id, "pw")
	u, _ := ParseUserLine("alice " + h + " example.com")
	us, _ := NewUsers([]User{u})
	v := NewVerifier(1)
	for _, name := range []string{"alice", "unknown"} {
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				_, _ = v.Verify(context.Background(), us, name, "wrong")
			}
		})
	}
}
