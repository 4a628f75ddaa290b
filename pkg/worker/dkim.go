package worker

import (
	"io"
	"strings"

	"github.com/mailfwd/mailfwd/pkg/envelope"
)

// The ingress DKIM-signs a message while it stores it and keeps the
// DKIM-Signature field in the envelope (the stored body is never rewritten);
// delivery puts it in front of the body. A DSN the worker makes is a new
// envelope with its own signature, made by package bounce with the key of
// the relay's domain (Config.DKIM), or none: it is never sent under
// another message's signature.

// signedInline returns e's inline body with e's DKIM-Signature field in
// front (a new slice; e.Body is not touched), or e.Body.
func signedInline(e *envelope.Envelope) []byte {
	if e.DKIMSignature == "" || e.Body == nil {
		return e.Body
	}
	b := make([]byte, 0, len(e.DKIMSignature)+len(e.Body))
	return append(append(b, e.DKIMSignature...), e.Body...)
}

// signedStream puts e's DKIM-Signature field in front of a stored body
// opened for delivery, and returns the size with it.
func signedStream(e *envelope.Envelope, rc io.ReadCloser, size int64) (io.ReadCloser, int64) {
	if e.DKIMSignature == "" {
		return rc, size
	}
	return struct {
		io.Reader
		io.Closer
	}{io.MultiReader(strings.NewReader(e.DKIMSignature), rc), rc}, size + int64(len(e.DKIMSignature))
}
