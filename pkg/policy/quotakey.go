package policy

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/mailfwd/mailfwd/pkg/address"
)

// QuotaKeyName is the sender a key of the fleet's quota state counts, as
// operators write it: the domain ("example.com") of a "d." key, or
// "user:NAME" of a "u." key. ok is false for any other key: one no
// ingress makes (QuotaNameKey of the name is not the key), or whose name
// is not printable text (a key written with a stolen credential must not
// reach an operator's terminal as control characters).
func QuotaKeyName(key string) (name string, ok bool) {
	kind, tok, _ := strings.Cut(key, ".")
	if tok == "" || (kind != "d" && kind != "u") {
		return "", false
	}
	if enc, isEnc := strings.CutPrefix(tok, "="); isEnc {
		b, err := base64.RawURLEncoding.DecodeString(enc)
		if err != nil || len(b) == 0 {
			return "", false
		}
		tok = string(b)
	}
	if !printable(tok) {
		return "", false
	}
	name = tok
	if kind == "u" {
		name = quotaUser + tok
	}
	if k, err := QuotaNameKey(name); err != nil || k != key {
		return "", false
	}
	return name, true
}

func printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}

// QuotaNameKey is the key of the count QuotaKeyName names: "example.com"
// (the rule's domain, or a sender domain counted under "*") or
// "user:NAME". The rules' wildcards name no one count.
func QuotaNameKey(name string) (string, error) {
	if u, isUser := cutFold(name, quotaUser); isUser {
		if u == "" || u == "*" {
			return "", fmt.Errorf("%q names no one user (want user:NAME)", name)
		}
		return "u." + keyToken(strings.ToLower(u)), nil
	}
	if name == "" || name == QuotaAnyDomain {
		return "", errors.New("want a sender domain (example.com) or user:NAME")
	}
	d, err := address.Domain(strings.TrimPrefix(name, "."))
	if err != nil {
		return "", fmt.Errorf("bad sender domain %q: %v", name, err)
	}
	return "d." + keyToken(strings.ToLower(d)), nil
}

// RuleOf returns the rule a quota key is counted under by q, as For
// would choose it for that sender now; false if none would count it
// there (the rules changed since: the key expires by itself).
func (q *Quotas) RuleOf(key string) (Quota, bool) {
	name, ok := QuotaKeyName(key)
	if !ok || q == nil {
		return Quota{}, false
	}
	var found []Quota
	if u, isUser := strings.CutPrefix(name, quotaUser); isUser {
		found = q.For("", u)
	} else {
		found = q.For(name, "")
	}
	for _, r := range found {
		if r.Key == key {
			return r, true
		}
	}
	return Quota{}, false
}
