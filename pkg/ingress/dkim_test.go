package ingress_test

import (
	"context"
	"strings"
	"testing"
	"time"

	msgdkim "github.com/emersion/go-msgauth/dkim"

	"github.com/mailfwd/mailfwd/pkg/dkim"
	"github.com/mailfwd/mailfwd/pkg/ingress"
)

// The ingress signs what a relay client (here) stores (its Received: included) and keeps the
// signature in the envelope; the stored body is not changed. Inline and
// blob-stored bodies alike; a From: domain without a key is not signed.
func TestDKIMSignatureInEnvelope(t *testing.T) {
	signer, err := dkim.GenerateKey("ed25519")
	if err != nil {
		t.Fatal(err)
	}
	k := dkim.Key{Domain: "src.test", Selector: "s1", Signer: signer}
	line, _ := k.Line()
	parsed, err := dkim.ParseKeyLine(line)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := dkim.NewKeys([]dkim.Key{parsed})
	if err != nil {
		t.Fatal(err)
	}
	txt, err := k.TXTRecord()
	if err != nil {
		t.Fatal(err)
	}
	opts := &msgdkim.VerifyOptions{LookupTXT: func(name string) ([]string, error) {
		if name != k.DNSName() {
			t.Errorf("lookup of %s", name)
		}
		return []string{txt}, nil
	}}
	f := start(t, func(c *ingress.Config) {
		c.DKIM = func() *dkim.Keys { return keys }
		c.DKIMSignRelayClients = true // loopback is a relay network here
		c.InlineBodyMax = 4096
	})
	for _, tc := range []struct {
		name, from, body string
		inline, signed   bool
	}{
		{"inline", "a@src.test", "short\r\n", true, true},
		{"stored", "a@src.test", strings.Repeat("0123456789abcdef\r\n", 8000), false, true},
		{"no key for the domain", "a@other.test", "short\r\n", true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dial(t, f.addr)
			c.expect(250, "EHLO client.test")
			c.expect(250, "MAIL FROM:<%s>", tc.from)
			c.expect(250, "RCPT TO:<u@dst.test>")
			data := "From: " + tc.from + "\r\nSubject: sign me\r\n\r\n" + tc.body
			qid := queueID(t, c.sendData(data))
			jobs := f.fetch(1, 10*time.Second)
			if len(jobs) != 1 || jobs[0].Env.QueueID != qid {
				t.Fatalf("queued %v", jobs)
			}
			env := jobs[0].Env
			_ = jobs[0].Ack(context.Background())
			stored := env.Body
			if !tc.inline {
				if stored != nil {
					t.Fatal("a large body was inlined")
				}
				if stored, err = f.store.Get(context.Background(), qid); err != nil {
					t.Fatal(err)
				}
			}
			if !strings.HasPrefix(string(stored), "Received: ") || !strings.HasSuffix(string(stored), data) {
				t.Fatalf("stored body changed: %.200q", stored)
			}
			if !tc.signed {
				if env.DKIMSignature != "" {
					t.Fatalf("signed without a key: %q", env.DKIMSignature)
				}
				return
			}
			vs, err := msgdkim.VerifyWithOptions(strings.NewReader(env.DKIMSignature+string(stored)), opts)
			if err != nil || len(vs) != 1 || vs[0].Err != nil {
				t.Fatalf("verify: %+v %v (signature %q)", vs, err, env.DKIMSignature)
			}
		})
	}
}
