package tlspolicy

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
)

// OAuth2 are relayhost credentials for SASL XOAUTH2 (Microsoft 365,
// Google Workspace relays): an access token from the OAuth 2.0 client
// credentials grant (RFC 6749 §4.4), fetched and renewed by the worker.
//
// authinfo form:
//
//	[smtp.office365.com]:587  xoauth2 user=relay@example.com token_url=https://login.microsoftonline.com/TENANT/oauth2/v2.0/token client_id=ID client_secret=SECRET scope=https://outlook.office365.com/.default
type OAuth2 struct {
	User         string
	TokenURL     string
	ClientID     string
	ClientSecret string
	Scopes       []string
}

func (o *OAuth2) key() string {
	return o.TokenURL + "\x00" + o.ClientID + "\x00" + o.ClientSecret + "\x00" + strings.Join(o.Scopes, " ")
}

// parseOAuth2 parses the words after "xoauth2".
func parseOAuth2(rest string) (*OAuth2, error) {
	o := &OAuth2{}
	seen := map[string]bool{}
	for _, w := range strings.Fields(rest) {
		k, v, ok := strings.Cut(w, "=")
		if !ok || v == "" {
			return nil, fmt.Errorf("xoauth2: %q is not name=value", redact(k))
		}
		if seen[k] && k != "scope" {
			return nil, fmt.Errorf("xoauth2: %s given twice", k)
		}
		seen[k] = true
		switch k {
		case "user":
			o.User = v
		case "token_url":
			u, err := url.Parse(v)
			if err != nil || u.Scheme != "https" || u.Host == "" {
				return nil, errors.New("xoauth2: token_url must be an https:// URL")
			}
			o.TokenURL = v
		case "client_id":
			o.ClientID = v
		case "client_secret":
			o.ClientSecret = v
		case "scope":
			o.Scopes = append(o.Scopes, v)
		default:
			return nil, fmt.Errorf("xoauth2: unknown field %q (user, token_url, client_id, client_secret, scope)", redact(k))
		}
	}
	for _, f := range []string{"user", "token_url", "client_id", "client_secret"} {
		if !seen[f] {
			return nil, fmt.Errorf("xoauth2: %s= is required", f)
		}
	}
	return o, nil
}

// redact keeps a field name short and printable for an error message.
func redact(s string) string {
	if len(s) > 20 {
		return s[:20] + "…"
	}
	return s
}

// Tokens fetches and caches XOAUTH2 access tokens, renewing them before
// they expire. Safe for concurrent use; one entry per distinct client.
type Tokens struct {
	http *http.Client
	mu   sync.Mutex
	src  map[string]oauth2.TokenSource
}

// DefaultTokenTimeout bounds one token request (--oauth2-token-timeout).
const DefaultTokenTimeout = 20 * time.Second

// NewTokens returns a token cache whose requests trust roots (nil: the
// system roots) and take at most timeout (0: DefaultTokenTimeout).
func NewTokens(roots *x509.CertPool, timeout time.Duration) *Tokens {
	if timeout <= 0 {
		timeout = DefaultTokenTimeout
	}
	return &Tokens{
		http: &http.Client{
			Timeout: timeout,
			Transport: &http.Transport{
				TLSClientConfig:        &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
				Proxy:                  nil,
				MaxResponseHeaderBytes: 16 << 10,
				TLSHandshakeTimeout:    timeout,
				ResponseHeaderTimeout:  timeout,
			},
			CheckRedirect: func(*http.Request, []*http.Request) error {
				return errors.New("xoauth2: token endpoint redirect refused")
			},
		},
		src: map[string]oauth2.TokenSource{},
	}
}

// Token returns a valid access token for o.
func (t *Tokens) Token(o *OAuth2) (string, error) {
	t.mu.Lock()
	src, ok := t.src[o.key()]
	if !ok {
		cc := &clientcredentials.Config{ClientID: o.ClientID, ClientSecret: o.ClientSecret, TokenURL: o.TokenURL, Scopes: o.Scopes}
		ctx := context.WithValue(context.Background(), oauth2.HTTPClient, t.http)
		src = oauth2.ReuseTokenSource(nil, cc.TokenSource(ctx))
		t.src[o.key()] = src
	}
	t.mu.Unlock()
	tok, err := src.Token()
	if err != nil {
		var re *oauth2.RetrieveError
		if errors.As(err, &re) {
			// Never the response body: it may echo the client secret.
			return "", fmt.Errorf("xoauth2: token endpoint %s: HTTP %d %s", o.TokenURL, re.Response.StatusCode, re.ErrorCode)
		}
		return "", fmt.Errorf("xoauth2: token endpoint %s: %w", o.TokenURL, err)
	}
	return tok.AccessToken, nil
}

// xoauth2Client is the client side of SASL XOAUTH2.
type xoauth2Client struct{ user, token string }

func (c *xoauth2Client) Start() (string, []byte, error) {
	return "XOAUTH2", []byte("user=" + c.user + "\x01auth=Bearer " + c.token + "\x01\x01"), nil
}

// Next answers the server's error challenge (a JSON status) with an empty
// response, after which the server sends its 5xx.
func (c *xoauth2Client) Next([]byte) ([]byte, error) { return []byte{}, nil }

var _ sasl.Client = (*xoauth2Client)(nil)
