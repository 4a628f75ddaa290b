package delivery

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/mailfwd/mailfwd/pkg/dane"
	"github.com/mailfwd/mailfwd/pkg/mtasts"
	"github.com/mailfwd/mailfwd/pkg/tlspolicy"
)

// security is what must protect a connection to one hop, decided before
// connecting: the TLS level and credentials of the tls_policy/authinfo
// decision (raised by MTA-STS enforce), and DANE's TLSA records. A pooled
// connection is reused only for the same security (its key).
type security struct {
	d    tlspolicy.Decision
	host string        // the name a certificate is checked against: MX host or relay, no brackets
	dane *dane.Records // authenticated TLSA records; nil: DANE does not apply
	sts  bool          // the level comes from an enforced MTA-STS policy
	key  string
}

// level is the effective TLS level: DANE records make TLS mandatory.
func (s *security) level() tlspolicy.Level {
	if s.dane != nil && s.d.Level < tlspolicy.Encrypt {
		return tlspolicy.Encrypt
	}
	return s.d.Level
}

// describe is the level for logs: "secure", "dane", "verify (mta-sts)".
func (s *security) describe() string {
	switch {
	case s.dane != nil:
		return "dane"
	case s.sts:
		return s.d.Level.String() + " (mta-sts)"
	}
	return s.d.Level.String()
}

// makeKey fills s.key from everything that changes how a connection is
// set up: level, host, the names and roots a certificate is checked against, the
// TLSA records and the credentials (hashed: the key is not a secret store).
func (s *security) makeKey() {
	h := sha256.New()
	// The host too at every level: what the log says was verified is for
	// the name the connection was checked against.
	fmt.Fprintf(h, "level=%d\x00host=%s\x00", s.level(), s.host)
	if s.d.Level.Verifies() {
		fmt.Fprintf(h, "names=%s\x00ca=%s\x00", strings.Join(tlspolicy.MatchNames(s.d, s.host), ":"), s.d.Entry.CAFile)
	}
	if s.dane != nil {
		fmt.Fprintf(h, "dane=%s\x00", s.dane.Name)
		for _, t := range s.dane.All {
			fmt.Fprintf(h, "%d %d %d %s\x00", t.Usage, t.Selector, t.MatchingType, t.Certificate)
		}
		fmt.Fprintf(h, "nexthop=%s\x00", s.d.NextHop())
	}
	if a := s.d.Auth; a != nil {
		fmt.Fprintf(h, "auth=%s\x00%s\x00", s.d.AuthKey, a.String())
	}
	s.key = hex.EncodeToString(h.Sum(nil)[:16])
}

// tlsConfig is the STARTTLS configuration for s (level above none).
func (c *Client) secTLSConfig(s *security, hop Hop) (*tls.Config, error) {
	if s.dane != nil {
		return s.dane.Config(s.d.NextHop()), nil
	}
	if !s.d.Level.Verifies() && c.cfg.TLSConfig != nil {
		return c.tlsConfig(hop), nil
	}
	return c.cfg.TLSBuilder.Config(s.d, s.host)
}

// verified reports how the peer's certificate checks out for s, for the
// log: under verify/secure the handshake already required it; under DANE
// the records decide; under may/encrypt it is checked (PKIX, host name)
// only to say so.
func (c *Client) verified(s *security, cs tls.ConnectionState) (desc, verify string) {
	var err error
	switch {
	case s.dane != nil:
		err = s.dane.Verify(cs, s.d.NextHop())
	case s.d.Level.Verifies():
		err = nil // VerifyConnection accepted it
	default:
		err = c.cfg.TLSBuilder.Check(s.d, s.host, cs)
	}
	desc = tlspolicy.Describe(&cs, err)
	switch {
	case err == nil:
		verify = "OK"
	case len(cs.PeerCertificates) == 0:
		verify = "NO"
	default:
		verify = "FAIL"
	}
	return desc, verify
}

// planner decides the security of each hop of one Deliver call; the
// MTA-STS policy of the recipient domain is looked up once.
type planner struct {
	c      *Client
	log    *slog.Logger
	pol    *tlspolicy.Policy
	sts    *mtasts.Policy
	stsErr error
	stsGot bool
}

func (c *Client) newPlanner(hops []Hop, log *slog.Logger) *planner {
	p := &planner{c: c, log: log}
	if c.cfg.TLSPolicy != nil {
		p.pol = c.cfg.TLSPolicy()
	}
	return p
}

// plan returns the security for hop, or why hop must not be used (a
// temporary failure: the next hop is tried, the mail deferred when none is
// left).
func (p *planner) plan(ctx context.Context, hop Hop) (*security, result, bool) {
	s := &security{d: p.pol.Lookup(hop.Policy), host: hostOf(hop.Name)}
	if !p.c.cfg.StartTLS && s.d.Key == "" && !s.d.Raised {
		// --no-starttls: the built-in default is none; entries override it.
		s.d.Level, s.d.Entry = tlspolicy.None, tlspolicy.Entry{Level: tlspolicy.None}
	}
	if hop.MX && hop.Policy.Domain != "" {
		pkix := s.d.Level.Verifies() // tls_policy asks for PKIX: DANE does not replace it
		if p.c.cfg.DANE != nil && !pkix {
			recs, err := dane.Lookup(ctx, p.c.cfg.DANE, s.host, hop.Addr.Port())
			if err != nil {
				return nil, result{Enhanced: "4.7.5", Text: fmt.Sprintf(
					"DANE: the TLSA lookup for %s failed, so it is not known whether TLS must be authenticated: %v", hop.Name, err)}, false
			}
			s.dane = recs
		}
		if s.dane == nil && p.c.cfg.MTASTS != nil {
			// DANE, when it applies, takes precedence (RFC 8461 §2).
			sts := p.mtasts(ctx, hop.Policy.Domain)
			d, err := sts.Apply(s.d, hop.Name)
			if errors.Is(err, mtasts.ErrMXNotAllowed) {
				return nil, result{Enhanced: "4.7.0", Text: fmt.Sprintf(
					"MX host %s is not allowed by the MTA-STS policy (mode enforce) of %s", strings.TrimSuffix(hop.Name, "."), hop.Policy.Domain)}, false
			}
			if sts != nil && sts.Mode == mtasts.Testing && !sts.Match(hop.Name) {
				p.log.Warn("MTA-STS testing: the domain's policy does not list this MX; delivering anyway", "domain", hop.Policy.Domain, "relay", hop.Name, "policy", sts.String())
			}
			s.sts = d.Level != s.d.Level
			s.d = d
		}
	}
	s.makeKey()
	return s, result{}, true
}

// mtasts returns the domain's policy; a failed lookup is logged and means
// no policy (RFC 8461 §5.1), a valid cached policy having been kept by the
// client.
func (p *planner) mtasts(ctx context.Context, domain string) *mtasts.Policy {
	if !p.stsGot {
		p.sts, p.stsErr = p.c.cfg.MTASTS.Lookup(ctx, domain)
		p.stsGot = true
		if p.stsErr != nil {
			p.log.Warn("MTA-STS policy unavailable; delivering as if the domain had none", "domain", domain, "err", p.stsErr)
		}
	}
	return p.sts
}

// hostOf is a hop name as a certificate would carry it: no brackets, no
// trailing dot, lower case.
func hostOf(name string) string {
	n := strings.TrimSuffix(strings.TrimPrefix(strings.TrimSuffix(name, "]"), "["), ".")
	n = strings.TrimPrefix(strings.TrimPrefix(n, "IPv6:"), "ipv6:")
	return strings.ToLower(n)
}

// auth authenticates cn (TLS established) with sec's credentials: PLAIN,
// LOGIN or XOAUTH2, as the relay offers and the credentials allow. Any
// failure is temporary for the hop (as Postfix's smtp_sasl_auth_enforce):
// mail is never sent unauthenticated to a relay it has credentials for.
// failed is nil once authenticated; otherwise err is what the exchange
// ended with (nil: nothing was sent), for the caller to tell a session
// that still answers (it ends with QUIT) from a lost one.
func (c *Client) auth(cn *conn, sec *security, log *slog.Logger) (failed *result, err error) {
	name := cn.hop.Name
	offered, mechs := cn.sc.Extension("AUTH")
	if !offered {
		return &result{Enhanced: "4.7.0", Text: fmt.Sprintf(
			"Credentials (authinfo %s) are configured, but host %s does not offer AUTH", sec.d.AuthKey, name)}, nil
	}
	a, err := sec.d.SASL(cn.tls, mechs, c.cfg.Tokens)
	if err != nil {
		return &result{Enhanced: "4.7.0", Text: fmt.Sprintf("SASL authentication with %s not attempted: %v", name, err)}, nil
	}
	if err := cn.sc.Auth(&boundedSASL{Client: a, left: maxAuthChallenges}); err != nil {
		var se *smtp.SMTPError
		if errors.As(err, &se) {
			log.Warn("SASL authentication failed", "relay", name, "addr", cn.hop.Addr, "authinfo", sec.d.AuthKey,
				"user", sec.d.Auth.User, "reply", fmt.Sprintf("%d %s", se.Code, oneLine(se.Message)))
			return &result{Enhanced: "4.7.8", Text: fmt.Sprintf(
				"SASL authentication failed; server %s said: %d %s", name, se.Code, oneLine(se.Message))}, err
		}
		return &result{Enhanced: "4.4.2", Text: fmt.Sprintf("Lost connection with %s during AUTH: %v", name, err)}, err
	}
	log.Debug("authenticated", "relay", name, "addr", cn.hop.Addr, "authinfo", sec.d.AuthKey, "user", sec.d.Auth.User)
	return nil, nil
}

// maxAuthChallenges bounds the 334 challenges one AUTH exchange answers:
// PLAIN and XOAUTH2 need at most one, LOGIN two. A relay that keeps
// challenging (go-sasl's LOGIN client answers every "Password:" with the
// password, XOAUTH2's every challenge with an empty line) gets the
// exchange aborted instead of a loop.
const maxAuthChallenges = 4

// errTooManyChallenges ends an AUTH exchange past maxAuthChallenges.
var errTooManyChallenges = errors.New("too many AUTH challenges")

type boundedSASL struct {
	sasl.Client
	left int
}

func (b *boundedSASL) Next(challenge []byte) ([]byte, error) {
	if b.left <= 0 {
		return nil, errTooManyChallenges
	}
	b.left--
	return b.Client.Next(challenge)
}
