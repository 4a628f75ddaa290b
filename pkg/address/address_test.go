package address

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestParseValid(t *testing.T) {
	tests := []struct {
		name   string
		raw    string
		local  string
		domain string
		ascii  string
		utf8   bool
	}{
		{"plain", "user@example.com", "user", "example.com", "example.com", false},
		{"upper-case domain is lowered in ASCII only", "User@Example.COM", "User", "Example.COM", "example.com", false},
		{"MMS style", "+4512345678/TYPE=PLMN@mms.mnc001.mcc238.gprs", "+4512345678/TYPE=PLMN", "mms.mnc001.mcc238.gprs", "mms.mnc001.mcc238.gprs", false},
		{"dotted local", "first.last@example.org", "first.last", "example.org", "example.org", false},
		{"all atext specials", "!#$%&'*+-/=?^_`{|}~@example.net", "!#$%&'*+-/=?^_`{|}~", "example.net", "example.net", false},
		{"quoted local with space", `"john doe"@example.com`, `"john doe"`, "example.com", "example.com", false},
		{"quoted local with @", `"a@b"@example.com`, `"a@b"`, "example.com", "example.com", false},
		{"quoted local with escaped quote", `"a\"b"@example.com`, `"a\"b"`, "example.com", "example.com", false},
		{"quoted local with double dot", `"a..b"@example.com`, `"a..b"`, "example.com", "example.com", false},
		{"empty quoted local", `""@example.com`, `""`, "example.com", "example.com", false},
		{"UTF-8 local", "jörg@example.com", "jörg", "example.com", "example.com", true},
		{"CJK local", "用户@example.com", "用户", "example.com", "example.com", true},
		{"IDN domain", "user@bücher.example", "user", "bücher.example", "xn--bcher-kva.example", true},
		{"IDN domain upper case", "user@BÜCHER.example", "user", "BÜCHER.example", "xn--bcher-kva.example", true},
		{"A-label domain is not UTF8", "user@xn--bcher-kva.example", "user", "xn--bcher-kva.example", "xn--bcher-kva.example", false},
		{"UTF-8 local and IDN", "δοκιμή@παράδειγμα.δοκιμή", "δοκιμή", "παράδειγμα.δοκιμή", "xn--hxajbheg2az3al.xn--jxalpdlp", true},
		{"trailing dot", "user@example.com.", "user", "example.com.", "example.com", false},
		{"localhost", "postmaster@localhost", "postmaster", "localhost", "localhost", false},
		{"IPv4 literal", "user@[192.0.2.1]", "user", "[192.0.2.1]", "[192.0.2.1]", false},
		{"IPv6 literal", "user@[IPv6:2001:db8::1]", "user", "[IPv6:2001:db8::1]", "[IPv6:2001:db8::1]", false},
		{"IPv6 literal lower-case tag", "user@[ipv6:2001:db8::1]", "user", "[ipv6:2001:db8::1]", "[ipv6:2001:db8::1]", false},
		{"local of 64 octets", strings.Repeat("a", 64) + "@example.com", strings.Repeat("a", 64), "example.com", "example.com", false},
		{"digits in labels", "x@123.example", "x", "123.example", "123.example", false},
		{"hyphen in label", "x@mail-relay.example.com", "x", "mail-relay.example.com", "mail-relay.example.com", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := Parse(tt.raw)
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.raw, err)
			}
			want := Address{Raw: tt.raw, Local: tt.local, Domain: tt.domain, ASCII: tt.ascii, UTF8: tt.utf8}
			if a != want {
				t.Errorf("Parse(%q) = %+v, want %+v", tt.raw, a, want)
			}
		})
	}
}

func TestParseInvalid(t *testing.T) {
	long := strings.Repeat("a", 60) + "." + strings.Repeat("b", 60) + "."
	tests := []struct {
		name     string
		raw      string
		enhanced string
		reason   string // substring of Error.Reason
	}{
		{"empty", "", "5.1.3", "empty address"},
		{"no @", "user.example.com", "5.1.3", "no domain"},
		{"empty local", "@example.com", "5.1.3", "empty local part"},
		{"empty domain", "user@", "5.1.2", "empty domain"},
		{"leading dot", ".a@b.c", "5.1.3", "misplaced dot"},
		{"trailing dot in local", "a.@b.c", "5.1.3", "misplaced dot"},
		{"double dot", "a..b@c.d", "5.1.3", "misplaced dot"},
		{"local of 65 octets", strings.Repeat("a", 65) + "@example.com", "5.1.3", "longer than 64"},
		{"path over 256 octets", "a@" + long + long + "example.com", "5.1.3", "too long"},
		{"space in local", "a b@example.com", "5.1.3", "not allowed"},
		{"angle bracket in local", "a<b@example.com", "5.1.3", "not allowed"},
		{"comma in local", "a,b@example.com", "5.1.3", "not allowed"},
		{"control char in local", "a\x01b@example.com", "5.1.3", "not allowed"},
		{"DEL in local", "a\x7fb@example.com", "5.1.3", "not allowed"},
		{"NUL in local", "a\x00b@example.com", "5.1.3", "not allowed"},
		{"control char in quoted local", "\"a\x01b\"@example.com", "5.1.3", "control character"},
		{"unterminated quote", `"abc@example.com`, "5.1.3", "unterminated"},
		{"lone quote", `"@example.com`, "5.1.3", "unterminated"},
		{"unescaped quote inside quotes", `"a"b"@example.com`, "5.1.3", "unescaped quote"},
		{"dangling backslash", `"ab\"@example.com`, "5.1.3", "dangling backslash"},
		{"invalid UTF-8", "j\xffrg@example.com", "5.1.3", "not valid UTF-8"},
		{"invalid UTF-8 in domain", "user@ex\xc3ample.com", "5.1.3", "not valid UTF-8"},
		{"dotless domain", "user@example", "5.1.2", "not fully qualified"},
		{"domain with space", "user@exa mple.com", "5.1.2", "invalid domain"},
		{"domain with underscore", "user@ex_ample.com", "5.1.2", "invalid domain"},
		{"domain with star", "user@*.example.com", "5.1.2", "invalid domain"},
		{"domain with >", "user@example.com>", "5.1.2", "invalid domain"},
		{"domain with control char", "user@exa\x01mple.com", "5.1.2", "invalid domain"},
		{"bad IPv4 literal", "user@[192.0.2.256]", "5.1.2", "address literal"},
		{"IPv6 literal without tag", "user@[2001:db8::1]", "5.1.2", "address literal"},
		{"IPv4 in IPv6 tag", "user@[IPv6:192.0.2.1]", "5.1.2", "address literal"},
		{"IPv6 literal with zone", "user@[IPv6:fe80::1%eth0]", "5.1.2", "address literal"},
		{"unterminated literal", "user@[192.0.2.1", "5.1.2", "address literal"},
		{"empty literal", "user@[]", "5.1.2", "address literal"},
		{"host name literal", "user@[mail.example.com]", "5.1.2", "address literal"},
		{"domain with empty label", "user@example..com", "5.1.2", ""},
		{"domain with leading dot", "user@.example.com", "5.1.2", ""},
		{"domain is a dot", "user@.", "5.1.2", ""},
		{"domain of dots", "0@0...", "5.1.2", ""},
		{"mapped dots", "user@example。。com", "5.1.2", ""},
		{"label over 63 octets", "user@" + strings.Repeat("a", 64) + ".com", "5.1.2", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := Parse(tt.raw)
			if err == nil {
				t.Fatalf("Parse(%q) = %+v, want error", tt.raw, a)
			}
			var ae *Error
			if !errors.As(err, &ae) {
				t.Fatalf("Parse(%q) error %T %v, want *Error", tt.raw, err, err)
			}
			if ae.Addr != tt.raw {
				t.Errorf("Error.Addr = %q, want %q", ae.Addr, tt.raw)
			}
			if ae.Enhanced != tt.enhanced {
				t.Errorf("Error.Enhanced = %q, want %q (reason %q)", ae.Enhanced, tt.enhanced, ae.Reason)
			}
			if !strings.Contains(ae.Reason, tt.reason) {
				t.Errorf("Error.Reason = %q, want it to contain %q", ae.Reason, tt.reason)
			}
			if !strings.Contains(err.Error(), ae.Reason) {
				t.Errorf("Error() = %q does not contain the reason %q", err.Error(), ae.Reason)
			}
			if a != (Address{}) {
				t.Errorf("Parse(%q) returned %+v with the error, want zero Address", tt.raw, a)
			}
		})
	}
}

func TestDomain(t *testing.T) {
	tests := []struct {
		in      string
		want    string
		wantErr bool
	}{
		{"example.com", "example.com", false},
		{"EXAMPLE.com", "example.com", false},
		{"example.com.", "example.com", false},
		{"bücher.example", "xn--bcher-kva.example", false},
		{"xn--bcher-kva.example", "xn--bcher-kva.example", false},
		{"XN--BCHER-KVA.example", "xn--bcher-kva.example", false},
		{"localhost", "localhost", false},
		{"[192.0.2.1]", "[192.0.2.1]", false},
		{"[IPv6:2001:DB8::1]", "[IPv6:2001:DB8::1]", false},
		{"", "", true},
		{"example", "", true},
		{"[192.0.2.1", "", true},
		{"[300.0.2.1]", "", true},
		{"exa mple.com", "", true},
		{"a..b.com", "", true},
		{strings.Repeat("a.", 128) + "com", "", true},
	}
	for _, tt := range tests {
		got, err := Domain(tt.in)
		if (err != nil) != tt.wantErr {
			t.Errorf("Domain(%q) error = %v, wantErr %v", tt.in, err, tt.wantErr)
			continue
		}
		if got != tt.want {
			t.Errorf("Domain(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestLiteral(t *testing.T) {
	tests := []struct {
		in      string
		want    string
		wantErr bool
	}{
		{"[192.0.2.1]", "192.0.2.1", false},
		{"[127.0.0.9]", "127.0.0.9", false},
		{"[IPv6:2001:db8::1]", "2001:db8::1", false},
		{"[IPV6:2001:DB8::1]", "2001:db8::1", false},
		{"[IPv6:::1]", "::1", false},
		{"[IPv6:::ffff:192.0.2.1]", "::ffff:192.0.2.1", false},
		{"192.0.2.1", "", true},
		{"[192.0.2.1", "", true},
		{"192.0.2.1]", "", true},
		{"[]", "", true},
		{"[", "", true},
		{"]", "", true},
		{"[IPv6:]", "", true},
		{"[IPv6:192.0.2.1]", "", true},
		{"[2001:db8::1]", "", true},
		{"[192.0.2]", "", true},
		{"[192.0.2.1.5]", "", true},
		{"[IPv6:fe80::1%eth0]", "", true},
		{"[example.com]", "", true},
	}
	for _, tt := range tests {
		ip, err := Literal(tt.in)
		if (err != nil) != tt.wantErr {
			t.Errorf("Literal(%q) error = %v, wantErr %v", tt.in, err, tt.wantErr)
			continue
		}
		if tt.wantErr {
			if ip.IsValid() {
				t.Errorf("Literal(%q) = %v with an error, want the zero Addr", tt.in, ip)
			}
			continue
		}
		if want := netip.MustParseAddr(tt.want); ip != want {
			t.Errorf("Literal(%q) = %v, want %v", tt.in, ip, want)
		}
	}
}

func TestSubjectToken(t *testing.T) {
	tests := []struct {
		ascii, token string
	}{
		{"example.net", "net.example"},
		{"mms.mnc001.mcc238.gprs", "gprs.mcc238.mnc001.mms"},
		{"localhost", "localhost"},
		{"xn--bcher-kva.example", "example.xn--bcher-kva"},
		{"[192.0.2.1]", "_lit.192-0-2-1"},
		{"[IPv6:2001:db8::1]", "_lit.2001-db8--1"},
		{"[IPv6:2001:DB8:0:0:0:0:0:1]", "_lit.2001-db8--1"},
		{"[bogus]", "_lit.invalid"},
	}
	for _, tt := range tests {
		if got := SubjectToken(tt.ascii); got != tt.token {
			t.Errorf("SubjectToken(%q) = %q, want %q", tt.ascii, got, tt.token)
		}
		if strings.HasPrefix(tt.ascii, "[") {
			continue
		}
		if got := DomainFromToken(tt.token); got != tt.ascii {
			t.Errorf("DomainFromToken(%q) = %q, want %q", tt.token, got, tt.ascii)
		}
	}
}

func TestSubjectTokenOfParsedAddresses(t *testing.T) {
	for _, raw := range []string{
		"user@example.net",
		"+4512345678/TYPE=PLMN@mms.mnc001.mcc238.gprs",
		"user@Bücher.Example",
		"user@a.b.c.d.e.f",
	} {
		a, err := Parse(raw)
		if err != nil {
			t.Fatalf("Parse(%q): %v", raw, err)
		}
		tok := SubjectToken(a.ASCII)
		if back := DomainFromToken(tok); back != a.ASCII {
			t.Errorf("%q: DomainFromToken(SubjectToken(%q)) = %q", raw, a.ASCII, back)
		}
		checkToken(t, tok)
	}
}

// checkToken fails unless tok is usable as NATS subject tokens.
func checkToken(t *testing.T, tok string) {
	t.Helper()
	if strings.ContainsAny(tok, " \t\r\n*>") {
		t.Errorf("subject token %q contains a character that breaks NATS subjects", tok)
	}
	for _, part := range strings.Split(tok, ".") {
		if part == "" {
			t.Errorf("subject token %q has an empty token", tok)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		"user@example.com",
		"+4512345678/TYPE=PLMN@mms.mnc001.mcc238.gprs",
		`"john doe"@example.com`,
		`"a\"b"@example.com`,
		"jörg@bücher.example",
		"user@[192.0.2.1]",
		"user@[IPv6:2001:db8::1]",
		"user@example.com.",
		"user@example..com",
		"user@.",
		"a..b@c.d",
		"@",
		"",
		"user@xn--bcher-kva.example",
		"user@example.com。",
		"0@0...",
		"user@ｅｘａｍｐｌｅ．ｃｏｍ",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		a, err := Parse(raw)
		if err != nil {
			var ae *Error
			if !errors.As(err, &ae) {
				t.Fatalf("Parse(%q) error %T, want *Error", raw, err)
			}
			if ae.Enhanced != "5.1.2" && ae.Enhanced != "5.1.3" {
				t.Fatalf("Parse(%q) Enhanced = %q", raw, ae.Enhanced)
			}
			return
		}
		if a.Raw != raw {
			t.Fatalf("Raw = %q, want %q", a.Raw, raw)
		}
		if a.Local+"@"+a.Domain != raw {
			t.Fatalf("Local+@+Domain = %q, want %q", a.Local+"@"+a.Domain, raw)
		}
		if a.Local == "" || a.Domain == "" || a.ASCII == "" {
			t.Fatalf("Parse(%q) = %+v: empty part", raw, a)
		}
		if len(a.Local) > MaxLocalPart {
			t.Fatalf("local part of %d octets accepted", len(a.Local))
		}
		if strings.HasPrefix(a.ASCII, "[") {
			if _, err := Literal(a.ASCII); err != nil {
				t.Fatalf("ASCII %q is not a valid literal: %v", a.ASCII, err)
			}
			if a.ASCII != a.Domain {
				t.Fatalf("literal ASCII %q differs from Domain %q", a.ASCII, a.Domain)
			}
			return
		}
		if a.ASCII != strings.ToLower(a.ASCII) {
			t.Fatalf("ASCII %q is not lower-case", a.ASCII)
		}
		for i := 0; i < len(a.ASCII); i++ {
			if c := a.ASCII[i]; c >= 0x80 || c <= ' ' || c == '*' || c == '>' {
				t.Fatalf("ASCII %q contains %q", a.ASCII, c)
			}
		}
		checkToken(t, SubjectToken(a.ASCII))
		if back := DomainFromToken(SubjectToken(a.ASCII)); back != a.ASCII {
			t.Fatalf("DomainFromToken(SubjectToken(%q)) = %q", a.ASCII, back)
		}
		again, err := Domain(a.ASCII)
		if err != nil || again != a.ASCII {
			t.Fatalf("Domain(%q) = %q, %v; want it unchanged", a.ASCII, again, err)
		}
	})
}

// TestDomainInvalidUTF8: invalid UTF-8 was mapped by IDNA to an A-label
// that itself does not parse (found by the tls_policy key fuzzer).
func TestDomainInvalidUTF8(t *testing.T) {
	if a, err := Domain("0\x80.0"); err == nil {
		t.Fatalf("Domain accepted invalid UTF-8 as %q", a)
	}
}
