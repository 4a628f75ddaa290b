package dkim

import (
	"bytes"
	"crypto/ed25519"
	"regexp"
	"strings"
	"testing"

	msgdkim "github.com/emersion/go-msgauth/dkim"
)

// FuzzSigner feeds arbitrary messages, split at an arbitrary point, through
// the Signer: it must not fail or panic, and whatever it signs verifies.
func FuzzSigner(f *testing.F) {
	seed := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, ed25519.SeedSize))
	key := Key{Domain: "example.com", Selector: "s1", Signer: seed}
	keys, err := NewKeys([]Key{key})
	if err != nil {
		f.Fatal(err)
	}
	txt, _ := key.TXTRecord()
	opts := &msgdkim.VerifyOptions{LookupTXT: func(string) ([]string, error) { return []string{txt}, nil }}
	f.Add([]byte(message), 10)
	f.Add([]byte("From: a@example.com\n\nbody\n"), 3)
	f.Add([]byte("From: a@example.com\r\nSubject: x\r\n"), 0)
	f.Add([]byte("From: a@example.com\r\nFROM : ceo@example.com\r\n\r\nbody\r\n"), 5)
	f.Fuzz(func(t *testing.T, msg []byte, split int) {
		s := NewSigner(keys, Options{MaxHeaderBytes: 4096})
		if split%2 == 1 {
			// As the ingress does for an AUTH user: only some From: addresses.
			s = NewSigner(keys, Options{MaxHeaderBytes: 4096, Allow: func(a string) bool { return strings.EqualFold(a, "a@example.com") }})
		}
		if split < 0 || split > len(msg) {
			split = len(msg) / 2
		}
		if _, err := s.Write(msg[:split]); err != nil {
			t.Fatalf("Write: %v", err)
		}
		if _, err := s.Write(msg[split:]); err != nil {
			t.Fatalf("Write: %v", err)
		}
		if err := s.Close(); err != nil {
			return // go-msgauth refused the header section
		}
		if s.Header() == "" {
			return
		}
		// Whatever parser a verifier or a reader uses, a signed message has
		// one From: field (RFC 6376 §8.15): counted here on the raw lines.
		if n := rawFromFields(msg); n != 1 {
			t.Fatalf("signed a message with %d From: fields (by a raw count)", n)
		}
		// Only CRLF messages survive SMTP transport unchanged.
		if bytes.Contains(bytes.ReplaceAll(msg, []byte("\r\n"), nil), []byte("\n")) || bytes.Contains(bytes.ReplaceAll(msg, []byte("\r\n"), nil), []byte("\r")) {
			return
		}
		delivered := string(msg)
		if headerEnd(msg, 0) < 0 {
			// A message that is all header is signed (and must be
			// delivered) with the empty line that ends the header section.
			delivered += "\r\n"
		}
		vs, err := msgdkim.VerifyWithOptions(strings.NewReader(s.Header()+delivered), opts)
		if err != nil || len(vs) == 0 || vs[0].Err != nil {
			t.Fatalf("signed message does not verify: %v %+v", err, vs)
		}
	})
}

func FuzzParseKeyLine(f *testing.F) {
	k := Key{Domain: "example.com", Selector: "s1", Signer: ed25519.NewKeyFromSeed(bytes.Repeat([]byte{1}, 32))}
	line, _ := k.Line()
	f.Add(line)
	f.Add(line + " h=From:To")
	f.Fuzz(func(t *testing.T, text string) {
		k, err := ParseKeyLine(text)
		if err != nil {
			return
		}
		l, err := k.Line()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ParseKeyLine(l); err != nil {
			t.Fatalf("canonical line does not parse: %v", err)
		}
	})
}

// rawFromFields counts the header fields named From (any case, blanks
// before the colon too) in msg's header section.
func rawFromFields(msg []byte) int {
	hdr := string(msg)
	if m := headerEndRE.FindStringIndex(hdr); m != nil {
		hdr = hdr[:m[0]+1]
	}
	return len(fromFieldRE.FindAllString(hdr, -1))
}

var (
	headerEndRE = regexp.MustCompile(`(^|\n)\r?\n`)
	fromFieldRE = regexp.MustCompile(`(?im)^from[ \t]*:`)
)
