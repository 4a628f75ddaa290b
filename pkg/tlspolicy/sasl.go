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

// ErrNoCommonMechanism: the relay offers none of the mechanisms the
// credentials can use (PLAIN, LOGIN; XOAUTH2 for OAuth2 credentials).
var ErrNoCommonMechanism = errors.New("tlspolicy: the relay offers no AUTH mechanism mailfwd can use with these credentials")

// SASL returns the client for the hop's credentials, or nil when there are
// none. tlsUp says whether the session is encrypted; offered is the
// server's EHLO AUTH parameter ("PLAIN LOGIN …"). Passwords use PLAIN,
// else LOGIN; OAuth2 credentials XOAUTH2 with a token from tokens.
func (d Decision) SASL(tlsUp bool, offered string, tokens *Tokens) (sasl.Client, error) {
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
	if o := d.Auth.OAuth2; o != nil {
		if !mechs["XOAUTH2"] {
			return nil, ErrNoCommonMechanism
		}
		if tokens == nil {
			return nil, errors.New("tlspolicy: XOAUTH2 credentials need a token cache")
		}
		tok, err := tokens.Token(o)
		if err != nil {
			return nil, err
		}
		return &xoauth2Client{user: o.User, token: tok}, nil
	}
	switch {
	case mechs[sasl.Plain]:
		return sasl.NewPlainClient("", d.Auth.User, d.Auth.Password), nil
	case mechs[sasl.Login]:
		return sasl.NewLoginClient(d.Auth.User, d.Auth.Password), nil
	}
	return nil, ErrNoCommonMechanism
}
