// Package srs implements the Sender Rewriting Scheme in the SRS0/SRS1 forms
// of libsrs2 and postsrsd, so that a forwarder's rewritten senders verify
// with either, and bounces to addresses they made come back through mailfwd.
//
//	SRS0=HHHH=TT=orig-domain=orig-local@srs-domain
//	SRS1=HHHH=first-hop==HHHH=TT=orig-domain=orig-local@srs-domain
//
// HHHH is the first four characters of the base64 HMAC-SHA1, keyed with the
// secret, of the lower-cased fields; TT is the day number modulo 1024 in two
// base32 characters. The first secret signs; every secret verifies, so a key
// can be rotated while bounces to addresses signed with the old one are
// still in flight.
package srs

import (
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"
)

const (
	// HashLength is the number of base64 characters of the HMAC kept, as
	// libsrs2 and postsrsd default to.
	HashLength = 4
	// DefaultMaxAge is how long an SRS address stays valid (libsrs2: 21 days).
	DefaultMaxAge = 21 * 24 * time.Hour
	// MaxSecrets bounds the verify list.
	MaxSecrets = 8
	// maxAddr bounds the input we are willing to decode (RFC 5321 path limit).
	maxAddr = 256

	tsBase    = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
	tsSize    = 1024 // 10 bits of days
	precision = 24 * time.Hour
)

// Errors of Reverse. A caller answers ErrNotSRS as it would for any other
// address, and the rest with a 5xx: the address is not one this forwarder made
// (or no longer honours).
var (
	ErrNotSRS    = errors.New("not an SRS address")
	ErrBadHash   = errors.New("SRS hash does not verify")
	ErrExpired   = errors.New("SRS address has expired")
	ErrMalformed = errors.New("malformed SRS address")
)

// Rewriter signs and reverses SRS addresses for one SRS domain.
type Rewriter struct {
	domain  string // lower case
	secrets [][]byte
	maxAge  time.Duration
	now     func() time.Time
}

// New returns a Rewriter for domain. secrets[0] signs; all of them verify.
// maxAge 0 means DefaultMaxAge.
func New(domain string, secrets []string, maxAge time.Duration) (*Rewriter, error) {
	domain = strings.ToLower(strings.TrimSuffix(domain, "."))
	if domain == "" || strings.ContainsAny(domain, "@ \t=") {
		return nil, fmt.Errorf("srs: bad SRS domain %q", domain)
	}
	if len(secrets) == 0 {
		return nil, errors.New("srs: no secret")
	}
	if len(secrets) > MaxSecrets {
		return nil, fmt.Errorf("srs: %d secrets (at most %d)", len(secrets), MaxSecrets)
	}
	r := &Rewriter{domain: domain, maxAge: maxAge, now: time.Now}
	for i, s := range secrets {
		if s == "" {
			return nil, fmt.Errorf("srs: secret %d is empty", i+1)
		}
		r.secrets = append(r.secrets, []byte(s))
	}
	if r.maxAge <= 0 {
		r.maxAge = DefaultMaxAge
	}
	if r.maxAge >= tsSize*precision {
		return nil, fmt.Errorf("srs: max age %v is not below %d days", r.maxAge, tsSize)
	}
	return r, nil
}

// Domain is the SRS domain rewritten senders are given.
func (r *Rewriter) Domain() string { return r.domain }

// SetClock replaces the clock (tests).
func (r *Rewriter) SetClock(now func() time.Time) { r.now = now }

// IsSRS reports whether local is an SRS0 or SRS1 local part (any case).
func IsSRS(local string) bool {
	return len(local) > 5 && (strings.EqualFold(local[:4], "SRS0") || strings.EqualFold(local[:4], "SRS1")) && isSep(local[4])
}

func isSep(c byte) bool { return c == '=' || c == '+' || c == '-' }

// Forward rewrites the envelope sender local@domain for forwarding. An SRS0
// address of another forwarder becomes SRS1 (keeping its first hop), an SRS1
// address is re-signed for the same first hop, anything else becomes SRS0.
// An address already in our own domain is returned unchanged.
func (r *Rewriter) Forward(local, domain string) (string, error) {
	if local == "" || domain == "" {
		return "", errors.New("srs: empty local part or domain")
	}
	if strings.EqualFold(strings.TrimSuffix(domain, "."), r.domain) {
		return local + "@" + domain, nil
	}
	switch {
	case len(local) > 5 && strings.EqualFold(local[:4], "SRS1") && isSep(local[4]):
		// SRS1=HHHH=hop=opaque: keep hop and opaque, sign anew.
		parts := strings.SplitN(local[5:], "=", 3)
		if len(parts) != 3 || parts[1] == "" || len(parts[2]) < 2 || !isSep(parts[2][0]) {
			return "", ErrMalformed
		}
		hop, opaque := parts[1], parts[2]
		return "SRS1=" + r.hash(0, hop, opaque) + "=" + hop + "=" + opaque + "@" + r.domain, nil
	case len(local) > 5 && strings.EqualFold(local[:4], "SRS0") && isSep(local[4]):
		opaque := local[4:] // with its separator, as libsrs2 keeps it
		return "SRS1=" + r.hash(0, domain, opaque) + "=" + domain + "=" + opaque + "@" + r.domain, nil
	}
	tt := r.timestamp()
	return "SRS0=" + r.hash(0, tt, domain, local) + "=" + tt + "=" + domain + "=" + local + "@" + r.domain, nil
}

// Reverse turns an address this forwarder made back into the one it stands
// for: SRS0 gives the original sender, SRS1 the first hop's SRS0 address.
// The domain must be ours (any case); ErrNotSRS otherwise.
func (r *Rewriter) Reverse(addr string) (string, error) {
	if len(addr) > maxAddr {
		return "", ErrMalformed
	}
	at := strings.LastIndexByte(addr, '@')
	if at < 0 || !strings.EqualFold(strings.TrimSuffix(addr[at+1:], "."), r.domain) {
		return "", ErrNotSRS
	}
	local := addr[:at]
	if !IsSRS(local) {
		return "", ErrNotSRS
	}
	body := local[5:]
	if strings.EqualFold(local[:4], "SRS1") {
		// HHHH=hop==opaque (opaque starts with its own separator)
		parts := strings.SplitN(body, "=", 3)
		if len(parts) != 3 || parts[1] == "" || len(parts[2]) < 2 || !isSep(parts[2][0]) {
			return "", ErrMalformed
		}
		hash, hop, opaque := parts[0], parts[1], parts[2]
		if !r.verify(hash, hop, opaque) {
			return "", ErrBadHash
		}
		return "SRS0" + opaque + "@" + hop, nil
	}
	// SRS0: HHHH=TT=domain=local (the local part may hold '=')
	parts := strings.SplitN(body, "=", 4)
	if len(parts) != 4 || len(parts[1]) != 2 || parts[2] == "" || parts[3] == "" {
		return "", ErrMalformed
	}
	hash, tt, domain, orig := parts[0], parts[1], parts[2], parts[3]
	if !r.verify(hash, tt, domain, orig) {
		return "", ErrBadHash
	}
	if err := r.checkTimestamp(tt); err != nil {
		return "", err
	}
	return orig + "@" + domain, nil
}

func (r *Rewriter) hash(idx int, fields ...string) string {
	m := hmac.New(sha1.New, r.secrets[idx])
	for _, f := range fields {
		m.Write([]byte(strings.ToLower(f)))
	}
	return base64.StdEncoding.EncodeToString(m.Sum(nil))[:HashLength]
}

// verify accepts a hash made with any secret. The comparison ignores case,
// as libsrs2 does, because mail systems may fold the case of local parts.
func (r *Rewriter) verify(hash string, fields ...string) bool {
	if len(hash) != HashLength {
		return false
	}
	ok := false
	for i := range r.secrets {
		want := r.hash(i, fields...)
		if hmac.Equal([]byte(strings.ToLower(want)), []byte(strings.ToLower(hash))) {
			ok = true
		}
	}
	return ok
}

func (r *Rewriter) day() int { return int(r.now().Unix()/int64(precision/time.Second)) % tsSize }

func (r *Rewriter) timestamp() string {
	d := r.day()
	return string([]byte{tsBase[(d>>5)&31], tsBase[d&31]})
}

func (r *Rewriter) checkTimestamp(tt string) error {
	hi := strings.IndexByte(tsBase, upper(tt[0]))
	lo := strings.IndexByte(tsBase, upper(tt[1]))
	if hi < 0 || lo < 0 {
		return ErrMalformed
	}
	then := hi<<5 | lo
	age := (r.day() - then + tsSize) % tsSize
	if time.Duration(age)*precision > r.maxAge {
		return ErrExpired
	}
	return nil
}

func upper(c byte) byte {
	if c >= 'a' && c <= 'z' {
		return c - 'a' + 'A'
	}
	return c
}
