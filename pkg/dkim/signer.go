package dkim

import (
	"bytes"
	"errors"
	"fmt"
	"net/mail"
	"strings"
	"time"

	msgdkim "github.com/emersion/go-msgauth/dkim"
)

// DefaultMaxHeaderBytes bounds the header section a Signer holds while it
// looks for the From: field (--dkim-max-header-bytes).
const DefaultMaxHeaderBytes = 256 << 10

// Options configure a Signer.
type Options struct {
	// MaxHeaderBytes bounds the header section held in memory; a message
	// whose header is longer is not signed (Reason says so). 0: default.
	MaxHeaderBytes int
	// Expiration, when positive, sets x= that long after signing.
	Expiration time.Duration
	// Now is the clock for x= (tests); nil: time.Now.
	Now func() time.Time
	// Allow says whether the submitter may have mail signed as the From:
	// address addr (as written in the header, e.g. "Ann@Example.com"); a
	// message is signed only when every From: address is allowed. nil:
	// every address (the submitter may sign for any domain with a key).
	Allow func(addr string) bool
}

// Signer computes the DKIM-Signature of a message written to it: header
// section first, as it will be delivered (after the ingress's Received:),
// then the body. The key is chosen by the domain of the first From:
// address (Keys.For). Write never fails for a message that is not signed,
// so teeing through it cannot break the store path; Close says whether a
// signature was made. A message that ends inside its header section (no
// empty line, no body) is signed as if it ended with the empty line; it
// must be delivered with one.
type Signer struct {
	keys *Keys
	opts Options

	hdr    []byte // header section so far, until the key is chosen
	done   bool   // header seen: signing (sig != nil) or skipping
	sig    *msgdkim.Signer
	key    *Key
	reason string // why not signed
	header string // the DKIM-Signature field after Close
	err    error
}

// NewSigner returns a Signer over keys (the policy in force).
func NewSigner(keys *Keys, opts Options) *Signer {
	if opts.MaxHeaderBytes <= 0 {
		opts.MaxHeaderBytes = DefaultMaxHeaderBytes
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	return &Signer{keys: keys, opts: opts}
}

// Write feeds message bytes. It returns len(p) and no error unless the
// signing itself fails.
func (s *Signer) Write(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	if s.done {
		if s.sig == nil {
			return len(p), nil
		}
		if _, err := s.sig.Write(p); err != nil {
			s.err = fmt.Errorf("dkim: %w", err)
			return 0, s.err
		}
		return len(p), nil
	}
	from := max(0, len(s.hdr)-3)
	s.hdr = append(s.hdr, p...)
	end := headerEnd(s.hdr, from)
	if end < 0 {
		if len(s.hdr) > s.opts.MaxHeaderBytes {
			s.skip(fmt.Sprintf("header section longer than %d bytes", s.opts.MaxHeaderBytes))
		}
		return len(p), nil
	}
	if end > s.opts.MaxHeaderBytes {
		s.skip(fmt.Sprintf("header section longer than %d bytes", s.opts.MaxHeaderBytes))
		return len(p), nil
	}
	if err := s.start(s.hdr[:end]); err != nil {
		return 0, err
	}
	if s.sig == nil {
		s.hdr = nil
		return len(p), nil
	}
	if _, err := s.sig.Write(s.hdr); err != nil {
		s.err = fmt.Errorf("dkim: %w", err)
		return 0, s.err
	}
	s.hdr = nil
	return len(p), nil
}

func (s *Signer) skip(reason string) {
	s.done, s.reason, s.hdr = true, reason, nil
}

// headerEnd returns the index just past the blank line ending the header
// section in b (searching from from), or -1.
func headerEnd(b []byte, from int) int {
	if bytes.HasPrefix(b, []byte("\r\n")) {
		return 2
	}
	if bytes.HasPrefix(b, []byte("\n")) {
		return 1
	}
	for i := from; i < len(b); i++ {
		if b[i] != '\n' {
			continue
		}
		if i+1 < len(b) && b[i+1] == '\n' {
			return i + 2
		}
		if i+2 < len(b) && b[i+1] == '\r' && b[i+2] == '\n' {
			return i + 3
		}
	}
	return -1
}

// start picks the key from the header section and starts go-msgauth's
// signer; with no key it switches to skipping.
func (s *Signer) start(hdr []byte) error {
	s.done = true
	h, err := mail.ReadMessage(bytes.NewReader(hdr))
	if err != nil {
		s.reason = "header section does not parse: " + err.Error()
		return nil
	}
	if n := fromFields(hdr); n > 1 {
		// RFC 5322 §3.6 allows one; a verifier checks the last, a reader
		// may see the first (RFC 6376 §8.15).
		s.reason = fmt.Sprintf("%d From: fields", n)
		return nil
	}
	list, err := h.Header.AddressList("From")
	if err != nil || len(list) == 0 {
		s.reason = "no parsable From: address"
		return nil
	}
	if s.opts.Allow != nil {
		for _, a := range list {
			if !s.opts.Allow(a.Address) {
				s.reason = "From: " + a.Address + " is not a sender the client may sign for"
				return nil
			}
		}
	}
	at := strings.LastIndexByte(list[0].Address, '@')
	if at < 0 {
		s.reason = "From: address without domain"
		return nil
	}
	k, ok := s.keys.For(list[0].Address[at+1:])
	if !ok {
		s.reason = "no key for " + strings.ToLower(list[0].Address[at+1:])
		return nil
	}
	opts := &msgdkim.SignOptions{
		Domain:                 k.Domain,
		Selector:               k.Selector,
		Signer:                 k.Signer,
		HeaderCanonicalization: msgdkim.CanonicalizationRelaxed,
		BodyCanonicalization:   msgdkim.CanonicalizationRelaxed,
		HeaderKeys:             k.SignedHeaders(),
	}
	if s.opts.Expiration > 0 {
		opts.Expiration = s.opts.Now().Add(s.opts.Expiration)
	}
	sig, err := msgdkim.NewSigner(opts)
	if err != nil {
		s.err = fmt.Errorf("dkim: %w", err)
		return s.err
	}
	s.sig, s.key = sig, k
	return nil
}

// fromFields counts the From fields of a header section on its raw lines,
// as a DKIM verifier reads names (any case, blanks before the colon), not
// as net/mail does: it keeps "From :" apart from "From".
func fromFields(hdr []byte) int {
	n := 0
	for len(hdr) > 0 {
		line := hdr
		if i := bytes.IndexByte(hdr, '\n'); i >= 0 {
			line, hdr = hdr[:i], hdr[i+1:]
		} else {
			hdr = nil
		}
		name, _, ok := bytes.Cut(line, []byte(":"))
		if ok && strings.EqualFold(string(bytes.TrimRight(name, " \t")), "from") {
			n++
		}
	}
	return n
}

// Close ends the message and computes the signature. It returns an error
// only when signing failed; an unsigned message (no key for its From:
// domain, header too long) is not an error: Header is "" and Reason says
// why.
func (s *Signer) Close() error {
	if s.err != nil {
		s.Abort()
		return s.err
	}
	if !s.done {
		// The message ended inside the header section (no body).
		hdr := append(s.hdr, "\r\n"...)
		s.hdr = nil
		if err := s.start(hdr); err != nil {
			return err
		}
		if s.sig != nil {
			if _, err := s.sig.Write(hdr); err != nil {
				s.err = fmt.Errorf("dkim: %w", err)
				s.Abort()
				return s.err
			}
		}
	}
	if s.sig == nil {
		return nil
	}
	if err := s.sig.Close(); err != nil {
		s.err = fmt.Errorf("dkim: %w", err)
		s.sig = nil
		return s.err
	}
	s.header = s.sig.Signature()
	s.sig = nil
	return nil
}

// Abort releases the signer without a signature (the message was not
// accepted). Safe to call more than once and after Close.
func (s *Signer) Abort() {
	if s.sig != nil {
		_ = s.sig.Close()
		s.sig = nil
	}
	if s.err == nil {
		s.err = errors.New("dkim: signer aborted")
	}
	s.hdr = nil
}

// Header returns the "DKIM-Signature: …\r\n" field to prepend at delivery,
// or "" when the message was not signed. Valid after Close.
func (s *Signer) Header() string { return s.header }

// Domain and Selector of the key used ("" when not signed).
func (s *Signer) Domain() string {
	if s.key == nil {
		return ""
	}
	return s.key.Domain
}

// Reason says why the message was not signed ("" when it was).
func (s *Signer) Reason() string {
	if s.header != "" {
		return ""
	}
	return s.reason
}
