package ingress

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

// headerRef is the reference reading of a header: whole, in one go.
func headerRef(body []byte, maxHops int) (hops int, msgid string, err error) {
	head, _, found := bytes.Cut(body, []byte("\n\r\n"))
	if !found {
		head, _, found = bytes.Cut(body, []byte("\n\n"))
	}
	lines := strings.Split(string(head), "\n")
	if !found {
		// An unterminated last line is not a header line yet.
		lines = lines[:len(lines)-1]
	} else if bytes.HasPrefix(body, []byte("\r\n")) || bytes.HasPrefix(body, []byte("\n")) {
		lines = nil
	}
	prevID := false
	for _, l := range lines {
		if len(l) > maxHeaderLine {
			return hops, msgid, errHeaderTooLarge
		}
		l = strings.TrimSuffix(l, "\r")
		if l == "" {
			break
		}
		if l[0] == ' ' || l[0] == '\t' {
			if prevID && msgid == "" {
				msgid = strings.TrimSpace(l)
			}
			continue
		}
		prevID = false
		name, value, _ := strings.Cut(l, ":")
		switch {
		case strings.EqualFold(strings.TrimSpace(name), "received"):
			hops++
			if hops > maxHops {
				return hops, msgid, errTooManyHops
			}
		case strings.EqualFold(name, "message-id") && msgid == "":
			msgid, prevID = strings.TrimSpace(value), true
		}
	}
	return hops, msgid, nil
}

// chunked yields data in pieces of the given sizes (cycled), so header
// lines are split at every possible place.
type chunked struct {
	data  []byte
	sizes []byte
	i     int
}

func (c *chunked) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := 1
	if len(c.sizes) > 0 {
		n = int(c.sizes[c.i%len(c.sizes)])%64 + 1
		c.i++
	}
	n = min(n, len(p), len(c.data))
	copy(p, c.data[:n])
	c.data = c.data[n:]
	return n, nil
}

// FuzzBodyReader: the streaming header scan (hop count, Message-ID) gives
// the same answer as reading the header whole, however the body is cut
// into reads, and passes every byte through unchanged.
func FuzzBodyReader(f *testing.F) {
	f.Add([]byte("Received: a\r\nReceived: b\r\n\tc\r\nMessage-ID: <x@y>\r\n\r\nReceived: body\r\n"), []byte{1, 2, 3})
	f.Add([]byte("Message-ID:\r\n <folded@id>\r\nReceived: x\r\nReceived: y\r\nReceived: z\r\n\r\n"), []byte{7})
	f.Add([]byte("\r\nReceived: a\r\nReceived: b\r\nReceived: c\r\n"), []byte{})
	f.Add([]byte("RECEIVED : a\nreceived:b\nReceived:c\n"), []byte{0, 63})
	f.Fuzz(func(t *testing.T, body, sizes []byte) {
		const maxHops = 2
		b := &bodyReader{r: &chunked{data: body, sizes: sizes}, maxHops: maxHops}
		out, err := io.ReadAll(b)
		hops, msgid, want := headerRef(body, maxHops)
		if !errors.Is(err, want) && !(err == nil && want == nil) {
			t.Fatalf("err %v, reference %v", err, want)
		}
		if err != nil {
			return
		}
		if !bytes.Equal(out, body) {
			t.Fatalf("body changed on the way through")
		}
		if b.hops != hops || b.msgid != msgid {
			t.Fatalf("hops %d msgid %q, reference %d %q", b.hops, b.msgid, hops, msgid)
		}
	})
}
