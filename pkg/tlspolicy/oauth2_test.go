package tlspolicy

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/mailfwd/mailfwd/pkg/testenv"
)

// xoauth2Server is the server side of XOAUTH2 for the test relay: it
// accepts "user=U\x01auth=Bearer T\x01\x01" when check(U, T) passes, and
// otherwise sends the JSON error challenge, then fails.
type xoauth2Server struct {
	check  func(user, token string) bool
	failed bool
}

func (s *xoauth2Server) Next(resp []byte) ([]byte, bool, error) {
	if s.failed {
		return nil, false, &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: "invalid token"}
	}
	parts := strings.Split(string(resp), "\x01")
	if len(parts) == 4 && strings.HasPrefix(parts[0], "user=") && strings.HasPrefix(parts[1], "auth=Bearer ") && parts[2] == "" && parts[3] == "" &&
		s.check(strings.TrimPrefix(parts[0], "user="), strings.TrimPrefix(parts[1], "auth=Bearer ")) {
		return nil, true, nil
	}
	s.failed = true
	return []byte(`{"status":"401","schemes":"bearer","scope":"https://mail.example/"}`), false, nil
}

type oauthRelay struct {
	mu    sync.Mutex
	valid map[string]bool
	got   []string
}

type oauthSession struct {
	r    *oauthRelay
	user string
}

func (r *oauthRelay) NewSession(*smtp.Conn) (smtp.Session, error) { return &oauthSession{r: r}, nil }
func (s *oauthSession) AuthMechanisms() []string                  { return []string{"XOAUTH2"} }
func (s *oauthSession) Auth(string) (sasl.Server, error) {
	return &xoauth2Server{check: func(u, tok string) bool {
		s.r.mu.Lock()
		defer s.r.mu.Unlock()
		if u == "relay@example.com" && s.r.valid[tok] {
			s.user = u
			return true
		}
		return false
	}}, nil
}
func (s *oauthSession) Mail(string, *smtp.MailOptions) error {
	if s.user == "" {
		return &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "Authentication required"}
	}
	return nil
}
func (s *oauthSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (s *oauthSession) Data(r io.Reader) error {
	b, err := io.ReadAll(io.LimitReader(r, 1<<20))
	s.r.mu.Lock()
	s.r.got = append(s.r.got, string(b))
	s.r.mu.Unlock()
	return err
}
func (s *oauthSession) Reset()        {}
func (s *oauthSession) Logout() error { return nil }

func TestXOAUTH2Relayhost(t *testing.T) {
	ca := testenv.NewCA(t)
	relay := &oauthRelay{valid: map[string]bool{}}
	var issued atomic.Int64
	tokenSrv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, secret, _ := r.BasicAuth()
		if err := r.ParseForm(); err != nil || r.Form.Get("grant_type") != "client_credentials" || id != "client-1" || secret != "s3cret" {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(401)
			fmt.Fprint(w, `{"error":"invalid_client","error_description":"bad secret s3cret-echo"}`)
			return
		}
		tok := fmt.Sprintf("tok-%d", issued.Add(1))
		relay.mu.Lock()
		relay.valid[tok] = true
		relay.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"access_token": tok, "token_type": "Bearer", "expires_in": 3600, "scope": r.Form.Get("scope")})
	}))
	tokenSrv.TLS = &tls.Config{Certificates: []tls.Certificate{ca.Issue(t, "127.0.0.1")}}
	tokenSrv.StartTLS()
	t.Cleanup(tokenSrv.Close)

	relayAddr := serveRelay(t, relay, "smtp.office365.test", ca.Issue(t, "smtp.office365.test"))

	line := func(secret string) string {
		return "xoauth2 user=relay@example.com token_url=" + tokenSrv.URL + "/token client_id=client-1 client_secret=" + secret + " scope=https://outlook.office365.com/.default"
	}
	b := &Builder{Roots: ca.Pool()}
	tokens := NewTokens(ca.Pool(), 10*time.Second)
	deliver := func(secret string) error {
		p := mustPolicy(t, map[string]string{"[smtp.office365.test]:587": "secure"}, map[string]string{"[smtp.office365.test]:587": line(secret)})
		d := p.Lookup(Hop{Domain: "example.net", Relay: "smtp.office365.test", Literal: true, Port: 587})
		if d.Auth == nil || d.Auth.OAuth2 == nil || d.Auth.String() != line(secret) {
			t.Fatalf("decision %+v", d)
		}
		return send(t, b, d, tokens, "smtp.office365.test", relayAddr)
	}
	for i := 0; i < 2; i++ {
		if err := deliver("s3cret"); err != nil {
			t.Fatalf("delivery %d: %v", i, err)
		}
	}
	if issued.Load() != 1 {
		t.Errorf("%d tokens issued for two deliveries, want 1 (cached until expiry)", issued.Load())
	}
	relay.mu.Lock()
	if len(relay.got) != 2 {
		t.Errorf("relay got %d messages", len(relay.got))
	}
	relay.mu.Unlock()

	// A wrong client secret: the token request fails with a clear error
	// that does not echo the endpoint's body.
	err := deliver("wrong")
	if err == nil || !strings.Contains(err.Error(), "HTTP 401 invalid_client") || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("wrong secret: %v", err)
	}
	// A token the relay does not take: 535 from the relay.
	relay.mu.Lock()
	relay.valid = map[string]bool{}
	relay.mu.Unlock()
	var se *smtp.SMTPError
	if err := deliver("s3cret"); !errors.As(err, &se) || se.Code != 535 {
		t.Errorf("revoked token: %v", err)
	}
}

func TestParseOAuth2Credentials(t *testing.T) {
	for rhs, want := range map[string]string{
		"xoauth2 user=u token_url=http://x.example/t client_id=i client_secret=s":              "https://",
		"xoauth2 user=u token_url=https://x.example/t client_id=i":                             "client_secret= is required",
		"xoauth2 user=u token_url=https://x.example/t client_id=i client_secret=s colour=blue": "unknown field",
		"xoauth2 user=u user=v token_url=https://x.example/t client_id=i client_secret=s":      "given twice",
		"xoauth2 junk": "not name=value",
	} {
		_, err := ParseCredentials(rhs)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseCredentials(%q) = %v, want %q", rhs, err, want)
		}
	}
	c, err := ParseCredentials("xoauth2 user=u token_url=https://x.example/t client_id=i client_secret=s scope=a scope=b")
	if err != nil || strings.Join(c.OAuth2.Scopes, " ") != "a b" {
		t.Errorf("%+v %v", c, err)
	}
	if p, err := ParseCredentials("xoauth2:password"); err != nil || p.User != "xoauth2" {
		t.Errorf("a user named xoauth2: %+v %v", p, err)
	}
}
