package srs

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// postsrsd's own unit test (tests/unit/test_srs2.c): secret "tops3cr3t",
// 2020-01-01 00:01:00 UTC, SRS domain example.com.
func postsrsdVector(t *testing.T, secrets ...string) *Rewriter {
	t.Helper()
	if len(secrets) == 0 {
		secrets = []string{"tops3cr3t"}
	}
	r, err := New("example.com", secrets, 0)
	if err != nil {
		t.Fatal(err)
	}
	r.SetClock(func() time.Time { return time.Unix(1577836860, 0) })
	return r
}

func TestForwardMatchesPostsrsd(t *testing.T) {
	r := postsrsdVector(t)
	got, err := r.Forward("test", "otherdomain.com")
	if err != nil {
		t.Fatal(err)
	}
	if want := "SRS0=vmyz=2W=otherdomain.com=test@example.com"; got != want {
		t.Fatalf("Forward = %q, want postsrsd's %q", got, want)
	}
	// Our own domain is left alone, as postsrsd does.
	if got, _ := r.Forward("test", "Example.COM"); got != "test@Example.COM" {
		t.Fatalf("own domain rewritten: %q", got)
	}
}

func TestReverseMatchesPostsrsd(t *testing.T) {
	r := postsrsdVector(t)
	got, err := r.Reverse("SRS0=vmyz=2W=otherdomain.com=test@example.com")
	if err != nil || got != "test@otherdomain.com" {
		t.Fatalf("Reverse = %q, %v", got, err)
	}
	// Case folded by a mail system on the way back still verifies.
	if got, err := r.Reverse("srs0=VMYZ=2w=OtherDomain.com=test@EXAMPLE.com"); err != nil || got != "test@OtherDomain.com" {
		t.Fatalf("case-folded Reverse = %q, %v", got, err)
	}
	if _, err := r.Reverse("test@example.com"); !errors.Is(err, ErrNotSRS) {
		t.Fatalf("plain address: %v", err)
	}
	if _, err := r.Reverse("SRS0=vmyz=2W=otherdomain.com=test@elsewhere.example"); !errors.Is(err, ErrNotSRS) {
		t.Fatalf("other domain: %v", err)
	}
}

func TestReverseRefusesForgeries(t *testing.T) {
	r := postsrsdVector(t)
	for _, a := range []string{
		"SRS0=vmyA=2W=otherdomain.com=test@example.com",          // wrong hash
		"SRS0=vmyz=2W=otherdomain.com=victim@example.com",        // hash of another sender
		"SRS0=vmyz=2X=otherdomain.com=test@example.com",          // timestamp changed
		"SRS0=vmy=2W=otherdomain.com=test@example.com",           // short hash
		"SRS1=vmyz=hop.example==vmyz=2W=a.example=b@example.com", // SRS1 with a forged hash
	} {
		if _, err := r.Reverse(a); !errors.Is(err, ErrBadHash) && !errors.Is(err, ErrMalformed) {
			t.Errorf("Reverse(%q) = %v, want a refusal", a, err)
		}
	}
	for _, a := range []string{"SRS0=@example.com", "SRS0=x=y@example.com", "SRS1=a=@example.com", strings.Repeat("a", 300) + "@example.com"} {
		if _, err := r.Reverse(a); err == nil {
			t.Errorf("Reverse(%q) accepted", a)
		}
	}
}

func TestExpiry(t *testing.T) {
	r := postsrsdVector(t)
	a, _ := r.Forward("test", "otherdomain.com")
	day := 24 * time.Hour
	for _, c := range []struct {
		after time.Duration
		ok    bool
	}{{0, true}, {20 * day, true}, {21 * day, true}, {22 * day, false}, {500 * day, false}} {
		r.SetClock(func() time.Time { return time.Unix(1577836860, 0).Add(c.after) })
		_, err := r.Reverse(a)
		if c.ok != (err == nil) {
			t.Errorf("after %v: %v", c.after, err)
		}
		if !c.ok && !errors.Is(err, ErrExpired) {
			t.Errorf("after %v: %v, want ErrExpired", c.after, err)
		}
	}
}

func TestKeyRotation(t *testing.T) {
	old := postsrsdVector(t, "old-secret")
	a, _ := old.Forward("alice", "sender.example")
	rotated := postsrsdVector(t, "new-secret", "old-secret")
	if got, err := rotated.Reverse(a); err != nil || got != "alice@sender.example" {
		t.Fatalf("old-key address after rotation: %q, %v", got, err)
	}
	b, _ := rotated.Forward("alice", "sender.example")
	if b == a {
		t.Fatal("the new key did not sign")
	}
	dropped := postsrsdVector(t, "new-secret")
	if _, err := dropped.Reverse(a); !errors.Is(err, ErrBadHash) {
		t.Fatalf("address of a dropped key: %v", err)
	}
}

func TestSRS1(t *testing.T) {
	r := postsrsdVector(t)
	// Another forwarder's SRS0 reaches us: we make SRS1 and keep its first hop.
	first, _ := New("first.example", []string{"first-secret"}, 0)
	first.SetClock(r.now)
	srs0, _ := first.Forward("alice", "origin.example")
	local, domain, _ := strings.Cut(srs0, "@")
	srs1, err := r.Forward(local, domain)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(srs1, "SRS1=") || !strings.Contains(srs1, "=first.example==") || !strings.HasSuffix(srs1, "@example.com") {
		t.Fatalf("SRS1 form: %q", srs1)
	}
	back, err := r.Reverse(srs1)
	if err != nil || back != srs0 {
		t.Fatalf("Reverse(SRS1) = %q, %v; want %q", back, err, srs0)
	}
	if orig, err := first.Reverse(back); err != nil || orig != "alice@origin.example" {
		t.Fatalf("first hop's reverse = %q, %v", orig, err)
	}
	// An SRS1 forwarded again keeps the first hop.
	l1, d1, _ := strings.Cut(srs1, "@")
	third, _ := New("third.example", []string{"third-secret"}, 0)
	srs1b, err := third.Forward(l1, d1)
	if err != nil || !strings.Contains(srs1b, "=first.example==") {
		t.Fatalf("re-forwarded SRS1: %q, %v", srs1b, err)
	}
}

func FuzzReverse(f *testing.F) {
	for _, s := range []string{"SRS0=vmyz=2W=otherdomain.com=test@example.com", "SRS1=aaaa=h==bbbb=AA=d=l@example.com", "SRS0==@example.com", "x@example.com"} {
		f.Add(s)
	}
	r, _ := New("example.com", []string{"tops3cr3t"}, 0)
	r.SetClock(func() time.Time { return time.Unix(1577836860, 0) })
	f.Fuzz(func(t *testing.T, a string) {
		out, err := r.Reverse(a)
		if err != nil {
			return
		}
		// Whatever verifies is an address, and signing it again reverses to it.
		at := strings.LastIndexByte(out, '@')
		if at <= 0 || at == len(out)-1 {
			t.Fatalf("Reverse(%q) = %q", a, out)
		}
		again, err := r.Forward(out[:at], out[at+1:])
		if err != nil {
			t.Fatalf("Forward(%q): %v", out, err)
		}
		if back, err := r.Reverse(again); err != nil || !strings.EqualFold(back, out) {
			t.Fatalf("round trip of %q: %q, %v", out, back, err)
		}
	})
}
