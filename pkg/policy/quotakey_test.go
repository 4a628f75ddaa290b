package policy

import (
	"encoding/base64"
	"testing"
)

func b64(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

// Every key For makes names its sender (QuotaKeyName), that name leads back
// to the key (QuotaNameKey: what mailfwdctl quota reset takes), and RuleOf
// finds the rule For chose; a key no rule would make now has none.
func TestQuotaKeysRoundTrip(t *testing.T) {
	p, err := Parse(map[string][]byte{KeyQuota: []byte(quotaExample)})
	if err != nil {
		t.Fatal(err)
	}
	q := p.Quotas
	for _, tc := range []struct{ domain, user, wantName, wantRule string }{
		{"mail.example.com", "", "example.com", "example.com"},
		{"x.bulk.example.net", "", "bulk.example.net", "bulk.example.net"},
		{"other.test", "", "other.test", "*"},
		{"[192.0.2.1]", "", "[192.0.2.1]", "*"},
		{"", "Alice", "user:alice", "user:alice"},
		{"", "bob@other.test", "user:bob@other.test", "user:*"},
		{"", "Ünïcode", "user:ünïcode", "user:*"},
	} {
		got := q.For(tc.domain, tc.user)
		if len(got) != 1 {
			t.Fatalf("For(%q, %q): %+v", tc.domain, tc.user, got)
		}
		name, ok := QuotaKeyName(got[0].Key)
		if !ok || name != tc.wantName {
			t.Errorf("QuotaKeyName(%q) = %q, %v; want %q", got[0].Key, name, ok, tc.wantName)
		}
		key, err := QuotaNameKey(name)
		if err != nil || key != got[0].Key {
			t.Errorf("QuotaNameKey(%q) = %q, %v; want %q", name, key, err, got[0].Key)
		}
		r, ok := q.RuleOf(got[0].Key)
		if !ok || r.Rule != tc.wantRule || r.Limit != got[0].Limit {
			t.Errorf("RuleOf(%q) = %+v, %v; want rule %q", got[0].Key, r, ok, tc.wantRule)
		}
	}
	// Written by hand as an operator would: case and a trailing dot.
	if k, err := QuotaNameKey("Example.COM."); err != nil || k != "d.example.com" {
		t.Errorf("QuotaNameKey(Example.COM.) = %q, %v", k, err)
	}
	if k, err := QuotaNameKey("USER:Alice"); err != nil || k != "u.alice" {
		t.Errorf("QuotaNameKey(USER:Alice) = %q, %v", k, err)
	}
	// A count of a subdomain taken under "*" before example.com had a rule
	// of its own: no rule counts it there now.
	if r, ok := q.RuleOf("d.mail.example.com"); ok {
		t.Errorf("RuleOf(d.mail.example.com) = %+v, want none (counted under example.com now)", r)
	}
	for _, bad := range []string{"", "*", "user:", "user:*", "bad domain", "a..b"} {
		if k, err := QuotaNameKey(bad); err == nil {
			t.Errorf("QuotaNameKey(%q) = %q, want an error", bad, k)
		}
	}
	for _, bad := range []string{"x.y", "d.", "u.=!!", "d", "d.Example.com", "u.=" + b64("alice"), "u.=" + b64("evil\x1b[2J"), "d.=" + b64("a\nb.test")} {
		if n, ok := QuotaKeyName(bad); ok {
			t.Errorf("QuotaKeyName(%q) = %q, want none", bad, n)
		}
	}
}

// FuzzQuotaKeys: any key that names a sender names it in printable text
// and leads back to itself; any name that has a key is named by it.
func FuzzQuotaKeys(f *testing.F) {
	for _, s := range []string{"d.example.com", "u.alice", "u.=" + b64("bob@x.test"), "d.=" + b64("[192.0.2.1]"), "example.com", "user:Alice", "user:bob@x.test", "[192.0.2.1]"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if name, ok := QuotaKeyName(s); ok {
			if !printable(name) {
				t.Fatalf("key %q names %q", s, name)
			}
			if k, err := QuotaNameKey(name); err != nil || k != s {
				t.Fatalf("key %q names %q, whose key is %q (%v)", s, name, k, err)
			}
		}
		key, err := QuotaNameKey(s)
		if err != nil {
			return
		}
		name, ok := QuotaKeyName(key)
		if !ok && printable(s) {
			t.Fatalf("name %q has key %q, which names no one", s, key)
		}
		if ok {
			if k2, err := QuotaNameKey(name); err != nil || k2 != key {
				t.Fatalf("name %q: key %q names %q, whose key is %q", s, key, name, k2)
			}
		}
	})
}
