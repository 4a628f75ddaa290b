package worker

import (
	"io"
	"strings"
	"testing"

	"github.com/mailfwd/mailfwd/pkg/envelope"
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
