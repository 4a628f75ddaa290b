package mxresolve

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/miekg/dns"
)

func TestNormalizeDomain(t *testing.T) {
	tests := []struct {
		in, want string
		ok       bool
	}{
		{"example.com", "example.com", true},
		{"Example.COM.", "example.com", true},
		{"bücher.test", "xn--bcher-kva.test", true},
		{"BÜCHER.test", "xn--bcher-kva.test", true},
		{"xn--bcher-kva.test", "xn--bcher-kva.test", true},
		{"localhost", "localhost", true},
		{"a-b.c0.test", "a-b.c0.test", true},
		{strings.Repeat("a", 63) + ".test", strings.Repeat("a", 63) + ".test", true},
		{"", "", false},
		{".", "", false},
		{"example.com..", "", false},
		{".example.com", "", false},
		{"a..b", "", false},
		{"exa mple.com", "", false},
		{"under_score.com", "", false},
		{"-lead.com", "", false},
		{"trail-.com", "", false},
		{"a@b.com", "", false},
		{strings.Repeat("a", 64) + ".test", "", false},
		{strings.Repeat("abcdefghi.", 26), "", false}, // 259 octets
		{"xn--zz.test", "", false},                    // bad punycode
	}
	for _, tt := range tests {
		got, err := normalizeDomain(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("normalizeDomain(%q) = %q, %v; want %q, ok=%v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

func FuzzNormalizeDomain(f *testing.F) {
	for _, s := range []string{"example.com", "bücher.test", "Example.COM.", "a..b", "xn--bcher-kva.test", "-x.y", "[127.0.0.1]", "é.é"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := normalizeDomain(s)
		if err != nil {
			if got != "" {
				t.Fatalf("normalizeDomain(%q) returned %q with error %v", s, got, err)
			}
			return
		}
		if got == "" || len(got) > maxNameLen || strings.ToLower(got) != got || !utf8.ValidString(got) {
			t.Fatalf("normalizeDomain(%q) = %q: not a lower-case name of 1..%d octets", s, got, maxNameLen)
		}
		for i := 0; i < len(got); i++ {
			if got[i] >= utf8.RuneSelf {
				t.Fatalf("normalizeDomain(%q) = %q: not ASCII", s, got)
			}
		}
		if _, ok := dns.IsDomainName(got); !ok {
			t.Fatalf("normalizeDomain(%q) = %q: not a DNS name", s, got)
		}
		again, err := normalizeDomain(got)
		if err != nil || again != got {
			t.Fatalf("normalizeDomain not idempotent: %q → %q → %q, %v", s, got, again, err)
		}
	})
}

func TestParseAddressLiteral(t *testing.T) {
	tests := []struct {
		in, literal string
		isLiteral   bool
		ok          bool
	}{
		{"[192.0.2.1]", "[192.0.2.1]", true, true},
		{"[IPv6:2001:DB8::1]", "[IPv6:2001:db8::1]", true, true},
		{"[ipv6:::1]", "[IPv6:::1]", true, true},
		{"[2001:db8::1]", "", true, false}, // IPv6 needs the tag
		{"[IPv6:192.0.2.1]", "", true, false},
		{"[192.0.2.256]", "", true, false},
		{"[]", "", true, false},
		{"[IPv6:fe80::1%eth0]", "", true, false},
		{"example.com", "", false, true},
		{"[", "", false, true},
	}
	for _, tt := range tests {
		_, literal, isLiteral, err := parseAddressLiteral(tt.in)
		if literal != tt.literal || isLiteral != tt.isLiteral || (err == nil) != tt.ok {
			t.Errorf("parseAddressLiteral(%q) = %q, %v, %v; want %q, %v, ok=%v", tt.in, literal, isLiteral, err, tt.literal, tt.isLiteral, tt.ok)
		}
	}
}

func TestServerAddrs(t *testing.T) {
	got, err := serverAddrs([]string{"127.0.0.1", "127.0.0.1:5353", "::1", "[::1]:53", "dns.example:53"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"127.0.0.1:53", "127.0.0.1:5353", "[::1]:53", "[::1]:53", "dns.example:53"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("serverAddrs = %v, want %v", got, want)
	}
	if _, err := serverAddrs([]string{":53"}); err == nil {
		t.Error("serverAddrs(:53) succeeded, want an error")
	}
}
