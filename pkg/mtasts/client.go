package mtasts

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/mailfwd/mailfwd/pkg/address"
)

// TXTResolver looks up TXT records (dnsquery.Client does).
type TXTResolver interface {
	TXT(ctx context.Context, name string) ([]string, error)
}

// Config configures a Client. Zero values take the defaults.
type Config struct {
	// DNS answers the _mta-sts TXT lookups (required).
	DNS TXTResolver
	// RootCAs verify the policy host's certificate; nil: system roots.
	RootCAs *x509.CertPool
	// DialContext replaces the dialer of the HTTPS fetch (tests send
	// mta-sts.<domain> to a loopback server); nil: net.Dialer.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// FetchTimeout bounds one policy fetch, connect to last byte
	// (--mta-sts-fetch-timeout, default 20s).
	FetchTimeout time.Duration
	// MaxPolicyBytes bounds a policy file (--mta-sts-max-policy-bytes,
	// default 64 KiB, as RFC 8461 §3.3 suggests).
	MaxPolicyBytes int64
	// MaxCachedPolicies bounds the cache (--mta-sts-cache-size, default
	// 10000 domains); past it expired entries, then the soonest to expire,
	// are dropped.
	MaxCachedPolicies int
	// Now is the clock (tests); nil: time.Now.
	Now func() time.Time
}

// Defaults of Config.
const (
	DefaultFetchTimeout      = 20 * time.Second
	DefaultMaxPolicyBytes    = 64 << 10
	DefaultMaxCachedPolicies = 10000
)

// Validate fills defaults and checks the configuration.
func (c *Config) Validate() error {
	if c.DNS == nil {
		return errors.New("mta-sts: no DNS resolver")
	}
	c.FetchTimeout = cmp.Or(c.FetchTimeout, DefaultFetchTimeout)
	c.MaxPolicyBytes = cmp.Or(c.MaxPolicyBytes, DefaultMaxPolicyBytes)
	c.MaxCachedPolicies = cmp.Or(c.MaxCachedPolicies, DefaultMaxCachedPolicies)
	switch {
	case c.FetchTimeout < 0:
		return fmt.Errorf("--mta-sts-fetch-timeout must be positive, got %v", c.FetchTimeout)
	case c.MaxPolicyBytes < 256:
		return fmt.Errorf("--mta-sts-max-policy-bytes must be at least 256, got %d", c.MaxPolicyBytes)
	case c.MaxCachedPolicies < 1:
		return fmt.Errorf("--mta-sts-cache-size must be at least 1, got %d", c.MaxCachedPolicies)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return nil
}

// Client looks up and caches policies. Safe for concurrent use.
type Client struct {
	cfg  Config
	http *http.Client

	mu    sync.Mutex
	cache map[string]*Policy
}

// New returns a Client.
func New(cfg Config) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	dial := cfg.DialContext
	if dial == nil {
		dial = (&net.Dialer{Timeout: cfg.FetchTimeout}).DialContext
	}
	tr := &http.Transport{
		DialContext:            dial,
		TLSClientConfig:        &tls.Config{RootCAs: cfg.RootCAs, MinVersion: tls.VersionTLS12},
		TLSHandshakeTimeout:    cfg.FetchTimeout,
		ResponseHeaderTimeout:  cfg.FetchTimeout,
		MaxResponseHeaderBytes: 16 << 10,
		DisableKeepAlives:      true,
		ForceAttemptHTTP2:      false,
		Proxy:                  nil, // never through a proxy from the environment
	}
	return &Client{
		cfg: cfg,
		http: &http.Client{
			Transport: tr,
			Timeout:   cfg.FetchTimeout,
			// RFC 8461 §3.3: redirects MUST NOT be followed.
			CheckRedirect: func(*http.Request, []*http.Request) error { return errRedirect },
		},
		cache: map[string]*Policy{},
	}, nil
}

var errRedirect = errors.New("mta-sts: the policy host answered with a redirect, which must not be followed")

// Lookup returns the policy in force for domain, or nil when it has none.
// A non-nil error with a nil policy says why a policy that the domain
// announces could not be had (DNS failure, fetch or parse error, and no
// valid cached policy): RFC 8461 §5.1 has the sender deliver as if the
// domain had none, so callers log the error and go on.
func (c *Client) Lookup(ctx context.Context, domain string) (*Policy, error) {
	d, err := address.Domain(domain)
	if err != nil {
		return nil, fmt.Errorf("mta-sts: %q: %v", domain, err)
	}
	now := c.cfg.Now()
	cached := c.cached(d, now)

	records, err := c.cfg.DNS.TXT(ctx, "_mta-sts."+d)
	if err != nil {
		if cached != nil {
			return cached, nil
		}
		return nil, fmt.Errorf("mta-sts: %s: TXT lookup: %w", d, err)
	}
	id, ok := ParseTXT(records)
	if !ok {
		// No (usable) record: a cached policy stays valid until it expires.
		return cached, nil
	}
	if cached != nil && cached.ID == id {
		return cached, nil
	}
	p, err := c.fetch(ctx, d)
	if err != nil {
		if cached != nil {
			return cached, nil
		}
		return nil, err
	}
	p.ID, p.Fetched = id, now
	c.store(d, p, now)
	return p, nil
}

func (c *Client) cached(d string, now time.Time) *Policy {
	c.mu.Lock()
	defer c.mu.Unlock()
	p, ok := c.cache[d]
	if !ok {
		return nil
	}
	if !now.Before(p.Expires()) {
		delete(c.cache, d)
		return nil
	}
	return p
}

func (c *Client) store(d string, p *Policy, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.cache[d]; !ok && len(c.cache) >= c.cfg.MaxCachedPolicies {
		for k, v := range c.cache {
			if !now.Before(v.Expires()) {
				delete(c.cache, k)
			}
		}
		for len(c.cache) >= c.cfg.MaxCachedPolicies {
			var victim string
			for k, v := range c.cache {
				if victim == "" || v.Expires().Before(c.cache[victim].Expires()) {
					victim = k
				}
			}
			delete(c.cache, victim)
		}
	}
	c.cache[d] = p
}

// Cached is the number of cached policies.
func (c *Client) Cached() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.cache)
}

// fetch gets https://mta-sts.<d>/.well-known/mta-sts.txt.
func (c *Client) fetch(ctx context.Context, d string) (*Policy, error) {
	url := "https://mta-sts." + d + "/.well-known/mta-sts.txt"
	ctx, cancel := context.WithTimeout(ctx, c.cfg.FetchTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("mta-sts: %s: %w", d, err)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("mta-sts: %s: fetch %s: %w", d, url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("mta-sts: %s: fetch %s: HTTP %d", d, url, resp.StatusCode)
	}
	mt, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if err != nil || mt != "text/plain" {
		return nil, fmt.Errorf("mta-sts: %s: policy Content-Type %q, want text/plain", d, resp.Header.Get("Content-Type"))
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, c.cfg.MaxPolicyBytes+1))
	if err != nil {
		return nil, fmt.Errorf("mta-sts: %s: read policy: %w", d, err)
	}
	if int64(len(body)) > c.cfg.MaxPolicyBytes {
		return nil, fmt.Errorf("mta-sts: %s: policy larger than %d bytes", d, c.cfg.MaxPolicyBytes)
	}
	p, err := ParsePolicy(body)
	if err != nil {
		return nil, fmt.Errorf("%w (%s)", err, d)
	}
	return p, nil
}

// String describes p for the log: "mode=enforce max_age=86400 mx=…".
func (p *Policy) String() string {
	if p == nil {
		return "none"
	}
	return fmt.Sprintf("mode=%s max_age=%d mx=%s id=%s", p.Mode, int64(p.MaxAge/time.Second), strings.Join(p.MX, ","), p.ID)
}
