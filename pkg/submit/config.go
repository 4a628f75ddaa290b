package submit

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/mailfwd/mailfwd/pkg/config"
)

// DefaultConfigFile is where mailfwd-sendmail looks for its settings.
const DefaultConfigFile = "/etc/mailfwd/sendmail.conf"

// Config is mailfwd-sendmail's settings: defaults, then the file
// (/etc/mailfwd/sendmail.conf, $MAILFWD_SENDMAIL_CONFIG or -C), then
// MAILFWD_SENDMAIL_<KEY> environment variables, then --key=value options.
type Config struct {
	Server         string        // ingress host:port
	Helo           string        // EHLO name
	TLS            string        // none, may (opportunistic), encrypt (required), verify (required and verified)
	TLSCAFile      string        // PEM roots for tls=verify (default: the system's)
	TLSServerName  string        // name verified in the certificate (default: the host of server)
	ConnectTimeout time.Duration // TCP connect
	Timeout        time.Duration // the whole submission
	MaxMessageSize int64         // bytes read from stdin at most (the ingress's --max-message-size)
	QualifyDomain  string        // appended to recipients and the sender without a domain (sendmail's $j)

	// For -bp, -q…, -bv/-bt (they run mailfwdctl's commands).
	Mailfwdctl string // the mailfwdctl binary (default: beside this one, else on $PATH)
	NATSURL    string
	NATSCreds  string
	PolicyDir  string
	Kubeconfig string
	Context    string
	Namespace  string
	DNSServer  string
}

// keys are the settings by their file, environment and option name.
var keys = []string{"server", "helo", "tls", "tls-ca-file", "tls-server-name", "connect-timeout", "timeout",
	"max-message-size", "qualify-domain", "mailfwdctl", "nats-url", "nats-creds", "policy-dir", "kubeconfig", "context", "namespace", "dns-server"}

// DefaultConfig is the configuration without file, environment or options.
// The host's FQDN (as hostname -f) names it in EHLO and qualifies bare
// user names (root → root@host.example.com, where bounces can reach);
// "localhost" only when the host has no fully qualified name.
func DefaultConfig() Config {
	helo, domain := config.Hostname(), "localhost"
	if f := config.FQDN(); f != "" {
		helo, domain = f, f
	}
	return Config{
		Server:         "127.0.0.1:25",
		Helo:           helo,
		TLS:            "may",
		ConnectTimeout: 30 * time.Second,
		Timeout:        5 * time.Minute,
		MaxMessageSize: 20_000_000,
		QualifyDomain:  domain,
		NATSURL:        "nats://127.0.0.1:4222",
	}
}

// set assigns one setting; where says where it came from, for the error.
func (c *Config) set(key, value, where string) error {
	var err error
	dur := func(d *time.Duration) {
		var v time.Duration
		v, err = config.ParseDuration(value)
		if err == nil {
			*d = v
		}
	}
	switch key {
	case "server":
		c.Server = value
	case "helo":
		c.Helo = value
	case "tls":
		c.TLS = value
	case "tls-ca-file":
		c.TLSCAFile = value
	case "tls-server-name":
		c.TLSServerName = value
	case "connect-timeout":
		dur(&c.ConnectTimeout)
	case "timeout":
		dur(&c.Timeout)
	case "max-message-size":
		c.MaxMessageSize, err = strconv.ParseInt(value, 10, 64)
	case "qualify-domain":
		c.QualifyDomain = value
	case "mailfwdctl":
		c.Mailfwdctl = value
	case "nats-url":
		c.NATSURL = value
	case "nats-creds":
		c.NATSCreds = value
	case "policy-dir":
		c.PolicyDir = value
	case "kubeconfig":
		c.Kubeconfig = value
	case "context":
		c.Context = value
	case "namespace":
		c.Namespace = value
	case "dns-server":
		c.DNSServer = value
	default:
		return fmt.Errorf("%s: unknown setting %q (known: %s)", where, key, strings.Join(keys, ", "))
	}
	if err != nil {
		return fmt.Errorf("%s: %s = %q: %v", where, key, value, err)
	}
	return nil
}

// Validate checks the settings once, before anything is read or sent.
func (c *Config) Validate() error {
	var errs []error
	if host, port, err := net.SplitHostPort(c.Server); err != nil || host == "" || port == "" {
		errs = append(errs, fmt.Errorf("server = %q: want host:port of a mailfwd ingress", c.Server))
	}
	if !slices.Contains([]string{"none", "may", "encrypt", "verify"}, c.TLS) {
		errs = append(errs, fmt.Errorf("tls = %q: want none, may, encrypt or verify", c.TLS))
	}
	if c.Helo == "" || strings.ContainsAny(c.Helo, " \t\r\n") {
		errs = append(errs, fmt.Errorf("helo = %q: want a host name", c.Helo))
	}
	if c.ConnectTimeout <= 0 || c.Timeout <= 0 {
		errs = append(errs, errors.New("connect-timeout and timeout must be positive"))
	}
	if c.MaxMessageSize < 1024 {
		errs = append(errs, fmt.Errorf("max-message-size = %d: must be at least 1024", c.MaxMessageSize))
	}
	if c.QualifyDomain == "" || strings.ContainsAny(c.QualifyDomain, " \t\r\n@<>") {
		errs = append(errs, fmt.Errorf("qualify-domain = %q: want a domain", c.QualifyDomain))
	}
	return errors.Join(errs...)
}

// maxConfigFile bounds the configuration file read.
const maxConfigFile = 1 << 20

// LoadFile applies a `key = value` file (# comments, blank lines).
// A sendmail.cf given by habit (-C /etc/mail/sendmail.cf) is refused with
// a message saying so rather than misread.
func (c *Config) LoadFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(ioLimit(f, maxConfigFile+1)); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if buf.Len() > maxConfigFile {
		return fmt.Errorf("%s: larger than %d bytes; not a mailfwd-sendmail configuration", path, maxConfigFile)
	}
	sc := bufio.NewScanner(&buf)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			if looksLikeSendmailCF(line) {
				return fmt.Errorf("%s:%d: this looks like a sendmail.cf (%q); mailfwd-sendmail reads `key = value` lines (server = host:port, …; see the README)", path, n, line)
			}
			return fmt.Errorf("%s:%d: want key = value, got %q", path, n, line)
		}
		if err := c.set(strings.TrimSpace(k), strings.TrimSpace(v), fmt.Sprintf("%s:%d", path, n)); err != nil {
			if looksLikeSendmailCF(line) {
				return fmt.Errorf("%s:%d: this looks like a sendmail.cf (%q); mailfwd-sendmail reads `key = value` lines (server = host:port, …; see the README)", path, n, line)
			}
			return err
		}
	}
	return sc.Err()
}

// looksLikeSendmailCF recognises sendmail.cf lines: "O QueueDirectory=…",
// "DSsmart", "R$* …", "Kmms regex …", "V10/Berkeley".
func looksLikeSendmailCF(line string) bool {
	if len(line) < 2 {
		return false
	}
	switch line[0] {
	case 'O', 'D', 'R', 'S', 'K', 'V', 'C', 'F', 'H', 'M', 'P', 'T', 'Q', 'L', 'E':
		return line[1] == ' ' || line[1] == '$' || (line[1] >= 'A' && line[1] <= 'Z') || (line[1] >= '0' && line[1] <= '9')
	}
	return false
}

// LoadEnv applies MAILFWD_SENDMAIL_<KEY> variables, and mailfwdctl's
// MAILFWD_NATS_URL, MAILFWD_NATS_CREDS and MAILFWD_POLICY_DIR.
func (c *Config) LoadEnv(getenv func(string) string) error {
	for k, env := range map[string]string{"nats-url": "MAILFWD_NATS_URL", "nats-creds": "MAILFWD_NATS_CREDS", "policy-dir": "MAILFWD_POLICY_DIR"} {
		if v := getenv(env); v != "" {
			if err := c.set(k, v, env); err != nil {
				return err
			}
		}
	}
	for _, k := range keys {
		env := "MAILFWD_SENDMAIL_" + strings.ToUpper(strings.ReplaceAll(k, "-", "_"))
		if v := getenv(env); v != "" {
			if err := c.set(k, v, env); err != nil {
				return err
			}
		}
	}
	return nil
}
