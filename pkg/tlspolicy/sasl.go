package tlspolicy

import (
	"errors"
	"strings"

	"github.com/emersion/go-sasl"
)

// ErrAuthWithoutTLS: credentials are configured for the hop but the
// session is not (yet) encrypted; the worker must not send AUTH and defers
// the hop (4.7.0).
var ErrAuthWithoutTLS = errors.New("tlspolicy: credentials are never sent without TLS")

// ErrNoCommonMechanism: the relay offers neither PLAIN nor LOGIN.
var ErrNoCommonMechanism = errors.New("tlspolicy: the relay offers no AUTH mechanism mailfwd has (PLAIN, LOGIN)")

// SASL returns the client for the hop's credentials, or nil when there are
// none. tlsUp says whether the session is encrypted; offered is the
// server's EHLO AUTH parameter ("PLAIN LOGIN …"). PLAIN is preferred,
// then LOGIN.
func (d Decision) SASL(tlsUp bool, offered string) (sasl.Client, error) {
	if d.Auth == nil {
		return nil, nil
	}
	if !tlsUp {
		return nil, ErrAuthWithoutTLS
	}
	mechs := map[string]bool{}
	for _, m := range strings.Fields(offered) {
		mechs[strings.ToUpper(m)] = true
	}
	switch {
	case mechs[sasl.Plain]:
		return sasl.NewPlainClient("", d.Auth.User, d.Auth.Password), nil
	case mechs[sasl.Login]:
		return sasl.NewLoginClient(d.Auth.User, d.Auth.Password), nil
	}
	return nil, ErrNoCommonMechanism
}
