package worker

import (
	"context"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	msgdkim "github.com/emersion/go-msgauth/dkim"

	"github.com/mailfwd/mailfwd/pkg/delivery"
	"github.com/mailfwd/mailfwd/pkg/dkim"
	"github.com/mailfwd/mailfwd/pkg/envelope"
	"github.com/mailfwd/mailfwd/pkg/sink"
)

// The ingress's DKIM-Signature goes in front of the body, inline or
// streamed, and the stored inline body is not modified.
func TestSignaturePrepended(t *testing.T) {
	const sig = "DKIM-Signature: v=1; d=app.test; b=x\r\n"
	body := []byte("Received: x\r\nFrom: a@app.test\r\n\r\nhi\r\n")
	e := &envelope.Envelope{Body: body, DKIMSignature: sig}
	if got := string(signedInline(e)); got != sig+string(body) {
		t.Fatalf("inline: %q", got)
	}
	if string(e.Body) != string(body) {
		t.Fatalf("inline body modified: %q", e.Body)
	}
	rc, size := signedStream(e, io.NopCloser(strings.NewReader(string(body))), int64(len(body)))
	b, _ := io.ReadAll(rc)
	if string(b) != sig+string(body) || size != int64(len(sig)+len(body)) {
		t.Fatalf("streamed: %q (size %d)", b, size)
	}
	e.DKIMSignature = ""
	if got := signedInline(e); string(got) != string(body) {
		t.Fatalf("unsigned inline: %q", got)
	}
	rc, size = signedStream(e, io.NopCloser(strings.NewReader(string(body))), int64(len(body)))
	if b, _ := io.ReadAll(rc); string(b) != string(body) || size != int64(len(body)) {
		t.Fatalf("unsigned streamed: %q", b)
	}
}

// A DSN is signed with the key of the relay's own domain (its From: is
// MAILER-DAEMON@Hostname; the key of a parent domain serves), and the
// signature verifies on what the destination receives (issue 19 item 1).
func TestDSNSignedWithTheRelaysKey(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	signer, err := dkim.GenerateKey("ed25519")
	if err != nil {
		t.Fatal(err)
	}
	k := dkim.Key{Domain: "relay.test", Selector: "s1", Signer: signer}
	keys, err := dkim.NewKeys([]dkim.Key{k})
	if err != nil {
		t.Fatal(err)
	}
	txt, err := k.TXTRecord()
	if err != nil {
		t.Fatal(err)
	}
	r := newRig(t, ctx, delivery.Config{})
	snk := sink.New(sink.Config{})
	r.route(".", snk.Start(t, "127.0.0.1:0"))
	r.run(Config{RepanicForTests: true, Hostname: "mx1.relay.test", DKIM: func() *dkim.Keys { return keys }}, nil, nil)
	qid := envelope.NewQueueID()
	e := &envelope.Envelope{QueueID: qid, From: sender, Domain: "lost.test", BodyKey: qid, Size: 100, Parts: 1,
		Arrived: time.Now().UTC(), Recipients: []envelope.Recipient{{Addr: "u@lost.test"}}}
	if err := r.q.Enqueue(ctx, []*envelope.Envelope{e}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, ctx, "the DSN", func() bool { return len(dsnsTo(snk, sender)) > 0 })
	d := string(dsnsTo(snk, sender)[0].Data)
	vs, err := msgdkim.VerifyWithOptions(strings.NewReader(d), &msgdkim.VerifyOptions{LookupTXT: func(name string) ([]string, error) {
		if name != k.DNSName() {
			return nil, fmt.Errorf("lookup of %s", name)
		}
		return []string{txt}, nil
	}})
	if err != nil || len(vs) != 1 || vs[0].Err != nil || vs[0].Domain != "relay.test" {
		t.Fatalf("DSN signature: %+v %v\n%.800s", vs, err, d)
	}
	if !strings.Contains(d, "From: Mail Delivery Subsystem <MAILER-DAEMON@mx1.relay.test>") {
		t.Fatalf("DSN From:\n%.800s", d)
	}
}
