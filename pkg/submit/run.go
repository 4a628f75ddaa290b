package submit

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"

	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"time"

	"github.com/mailfwd/mailfwd/pkg/config"
	"github.com/mailfwd/mailfwd/pkg/control"
)

// IO is the process's standard streams and environment.
type IO struct {
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	Getenv         func(string) string
}

const usage = `Usage: mailfwd-sendmail [options] [recipient ...]
Submits a message read from stdin to a mailfwd ingress over SMTP, as sendmail does.

  -t            recipients from the To:, Cc: and Bcc: header (Bcc: is removed;
                addresses on the command line are then NOT sent to, as sendmail)
  -i, -oi       a line with a single dot does not end the message
  -f ADDR       envelope sender (also -r);  -F NAME  full name for a missing From:
  -v            show the SMTP dialog
  -B 8BITMIME   body type;  -N never|success,failure,delay  -R full|hdrs  -V envid (DSN)
  -bm           deliver (the default)
  -bp, mailq    list the queue (mailfwdctl queue list);  -bP: queue counts
  -q, -qR S, -qS S, -qI S, -q!R S …   make deferred mail due now (mailfwdctl queue flush)
  -bv ADDR…     what would happen to these addresses (mailfwdctl route)
  -bt           the same for addresses read from stdin;  -d0 -bt shows the version
  -C FILE       settings file (default ` + DefaultConfigFile + `, or $MAILFWD_SENDMAIL_CONFIG)
  --KEY=VALUE   a setting: server, helo, tls, tls-ca-file, tls-server-name, timeout,
                connect-timeout, max-message-size, qualify-domain, nats-url, nats-creds,
                mailfwdctl, policy-dir, kubeconfig, context, namespace, dns-server
                (also MAILFWD_SENDMAIL_<KEY> in the environment)

Exit codes are sendmail's (sysexits.h): 0 queued, 64 usage, 65 bad data or too large,
67 a recipient refused (5xx), 68 ingress host unknown, 69 refused (5xx), 75 temporary
(4xx, ingress unreachable: try again), 76 protocol, 78 configuration. On any non-zero
exit nothing was queued (except 75 after a lost final reply, which says so).
`

// Main runs mailfwd-sendmail and returns its exit code.
func Main(ctx context.Context, prog string, args []string, sio IO) int {
	err := run(ctx, prog, args, sio)
	if err == nil {
		return ExOK
	}
	fmt.Fprintf(sio.Stderr, "mailfwd-sendmail: %v\n", err)
	return ExitCode(err)
}

func run(ctx context.Context, prog string, args []string, sio IO) error {
	inv, err := Parse(prog, args)
	if err != nil {
		return &Error{Code: ExUsage, Err: fmt.Errorf("%v (see mailfwd-sendmail --help)", err)}
	}
	if inv.Help {
		fmt.Fprint(sio.Stdout, usage)
		return nil
	}
	cfg, err := loadConfig(inv, sio.Getenv)
	if err != nil {
		return err
	}
	if inv.Verbose {
		for _, n := range inv.Notes {
			fmt.Fprintf(sio.Stderr, "mailfwd-sendmail: %s\n", n)
		}
	}
	switch inv.Mode {
	case ModeVersion:
		printVersion(sio.Stdout, cfg)
		return nil
	case ModeAliases:
		fmt.Fprintln(sio.Stdout, "mailfwd-sendmail: nothing to do: aliases live in the policy (mailfwdctl policy set aliases -f FILE); pods reload it by themselves")
		return nil
	case ModeQueueList:
		return runCtl(ctx, sio, cfg, ctlGlobals(cfg), "queue", "list")
	case ModeQueueStats:
		return runCtl(ctx, sio, cfg, ctlGlobals(cfg), "queue", "stats")
	case ModeQueueRun:
		return runCtl(ctx, sio, cfg, ctlGlobals(cfg), append([]string{"queue", "flush"}, inv.QueueFilters...)...)
	case ModeVerify:
		if len(inv.Recipients) == 0 {
			return fail(ExUsage, "-bv needs addresses")
		}
		if err := needPolicy(cfg, sio, "-bv"); err != nil {
			return err
		}
		return runCtl(ctx, sio, cfg, ctlGlobals(cfg), append(routeArgs(cfg, inv), inv.Recipients...)...)
	case ModeTest:
		if inv.Debug {
			printVersion(sio.Stdout, cfg)
		}
		addrs, err := testAddresses(sio.Stdin, sio.Stdout)
		if err != nil {
			return err
		}
		if len(addrs) == 0 {
			return nil
		}
		if err := needPolicy(cfg, sio, "-bt"); err != nil {
			return err
		}
		return runCtl(ctx, sio, cfg, ctlGlobals(cfg), append(routeArgs(cfg, inv), addrs...)...)
	}
	return deliver(ctx, inv, cfg, sio)
}

// needPolicy says once, in the settings' own names, that -bv/-bt have no
// policy to read, before mailfwdctl's Kubernetes client would.
func needPolicy(cfg Config, sio IO, opt string) error {
	if cfg.PolicyDir != "" || config.KubernetesHere(cfg.Kubeconfig, sio.Getenv) {
		return nil
	}
	return fail(ExConfig, "%s reads the policy, and there is no policy directory and no Kubernetes cluster here: set policy-dir (or kubeconfig) in %s, or MAILFWD_POLICY_DIR", opt, DefaultConfigFile)
}

func loadConfig(inv *Invocation, getenv func(string) string) (Config, error) {
	cfg := DefaultConfig()
	path, explicit := DefaultConfigFile, false
	if p := getenv("MAILFWD_SENDMAIL_CONFIG"); p != "" {
		path, explicit = p, true
	}
	if inv.ConfigFile != "" {
		path, explicit = inv.ConfigFile, true
	}
	if err := cfg.LoadFile(path); err != nil {
		if !errors.Is(err, fs.ErrNotExist) || explicit {
			return cfg, &Error{Code: ExConfig, Err: err}
		}
	}
	if err := cfg.LoadEnv(getenv); err != nil {
		return cfg, &Error{Code: ExConfig, Err: err}
	}
	for _, kv := range inv.Settings {
		if err := cfg.set(kv[0], kv[1], "--"+kv[0]); err != nil {
			return cfg, &Error{Code: ExUsage, Err: err}
		}
	}
	if err := cfg.Validate(); err != nil {
		return cfg, &Error{Code: ExConfig, Err: err}
	}
	return cfg, nil
}

func printVersion(w io.Writer, cfg Config) {
	b := control.Local("mailfwd-sendmail")
	fmt.Fprintf(w, "Version %s (mailfwd-sendmail, %s)\n", b.Version, b.GoVersion)
	if b.Revision != "" {
		fmt.Fprintf(w, " Revision %s\n", b.Revision)
	}
	fmt.Fprintf(w, " Submits to %s (tls %s); the running pods' versions: mailfwdctl version\n", cfg.Server, cfg.TLS)
}

func deliver(ctx context.Context, inv *Invocation, cfg Config, sio IO) error {
	if !inv.Extract && len(inv.Recipients) == 0 {
		// Said before waiting for a message that could not be sent anyway.
		return fail(ExUsage, "no recipients: give addresses on the command line, or -t to read them from the header")
	}
	msg, err := ReadMessage(sio.Stdin, cfg.MaxMessageSize, inv.IgnoreDots)
	if err != nil {
		return err
	}
	login := loginName(sio.Getenv)
	sender := inv.From
	if !inv.FromSet {
		sender = login
	}
	sender = qualify(sender, cfg.QualifyDomain)
	if cfg.QualifyDomain == "localhost" && strings.HasSuffix(sender, "@localhost") {
		// Bounces to root@localhost reach no one: say so, once per message.
		fmt.Fprintf(sio.Stderr, "mailfwd-sendmail: warning: this host has no fully qualified name (hostname -f), so the sender is %s and bounces will not reach it; set qualify-domain in %s\n", sender, DefaultConfigFile)
	}
	fullName := inv.FullName
	if fullName == "" && !inv.FromSet {
		fullName = sio.Getenv("NAME")
		if fullName == "" {
			fullName = gecosName()
		}
	}
	p, err := Prepare(msg, PrepareOptions{Extract: inv.Extract, Args: inv.Recipients, Sender: sender, FullName: fullName,
		QualifyDomain: cfg.QualifyDomain, Hostname: cfg.Helo, Now: time.Now()})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	var transcript io.Writer
	if inv.Verbose {
		transcript = sio.Stdout
	}
	_, err = Submit(ctx, cfg, Envelope{From: sender, Recipients: p.Recipients, Data: p.Data, Body: inv.Body,
		DSNNotify: inv.DSNNotify, DSNReturn: inv.DSNReturn, EnvID: inv.EnvID}, transcript, sio.Stderr)
	return err
}

func loginName(getenv func(string) string) string {
	if u, err := user.Current(); err == nil && u.Username != "" {
		return u.Username
	}
	for _, k := range []string{"LOGNAME", "USER"} {
		if v := getenv(k); v != "" {
			return v
		}
	}
	return "nobody"
}

func gecosName() string {
	u, err := user.Current()
	if err != nil {
		return ""
	}
	name, _, _ := strings.Cut(u.Name, ",")
	if name == u.Username {
		return ""
	}
	return name
}

func ctlGlobals(cfg Config) []string {
	g := []string{"--nats-url", cfg.NATSURL}
	if cfg.NATSCreds != "" {
		g = append(g, "--nats-creds", cfg.NATSCreds)
	}
	return g
}

func routeArgs(cfg Config, inv *Invocation) []string {
	a := []string{"route"}
	if cfg.PolicyDir != "" {
		a = append(a, "--policy-dir", cfg.PolicyDir)
	}
	for k, v := range map[string]string{"--kubeconfig": cfg.Kubeconfig, "--context": cfg.Context, "--namespace": cfg.Namespace, "--dns-server": cfg.DNSServer} {
		if v != "" {
			a = append(a, k, v)
		}
	}
	sender := loginName(os.Getenv)
	if inv.FromSet {
		sender = inv.From
	}
	return append(a, "--from", qualify(sender, cfg.QualifyDomain))
}

// maxTestInput bounds what -bt reads from stdin.
const maxTestInput = 1 << 20

// testAddresses reads -bt input: one address a line, optionally after a
// ruleset list ("3,0 user@example.com"); lines starting with / are
// sendmail's test commands, which mailfwd does not have.
func testAddresses(r io.Reader, w io.Writer) ([]string, error) {
	var out []string
	sc := bufio.NewScanner(ioLimit(r, maxTestInput))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if strings.HasPrefix(line, "/") {
			fmt.Fprintf(w, "%s: sendmail's test commands do not exist in mailfwd; give addresses\n", line)
			continue
		}
		f := strings.Fields(line)
		out = append(out, f[len(f)-1])
	}
	if err := sc.Err(); err != nil {
		return nil, fail(ExIOErr, "reading addresses: %v", err)
	}
	return out, nil
}

// mailfwdctl's exit codes (pkg/ctl: "exit codes scripts can trust").
const (
	ctlExitUsage    = 2
	ctlExitNotFound = 4
)

// ctlBinary finds mailfwdctl: the mailfwdctl setting, else the one beside
// this executable, else $PATH. mailfwd-sendmail runs it rather than linking
// it in: the operator modes need NATS and Kubernetes clients, which would
// make every application image's sendmail several times larger.
func ctlBinary(cfg Config) (string, error) {
	if cfg.Mailfwdctl != "" {
		return cfg.Mailfwdctl, nil
	}
	if self, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(self), "mailfwdctl")
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	p, err := exec.LookPath("mailfwdctl")
	if err != nil {
		return "", fail(ExUnavailable, "this mode runs mailfwdctl, which is not installed beside mailfwd-sendmail or on $PATH (or set mailfwdctl = PATH in %s)", DefaultConfigFile)
	}
	return p, nil
}

// runCtl runs a mailfwdctl command; its exit codes map to sendmail's.
func runCtl(ctx context.Context, sio IO, cfg Config, globals []string, args ...string) error {
	bin, err := ctlBinary(cfg)
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, bin, append(globals, args...)...)
	cmd.Stdout, cmd.Stderr = sio.Stdout, sio.Stderr
	err = cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return nil
	case !errors.As(err, &ee):
		return fail(ExUnavailable, "mailfwdctl: %v", err)
	case ee.ExitCode() == ctlExitUsage:
		return &Error{Code: ExUsage, Err: errors.New("mailfwdctl " + strings.Join(args, " ") + " failed")}
	case ee.ExitCode() == ctlExitNotFound:
		return &Error{Code: ExNoUser, Err: errors.New("not found")}
	}
	return &Error{Code: ExUnavailable, Err: fmt.Errorf("mailfwdctl %s failed (exit %d)", strings.Join(args, " "), ee.ExitCode())}
}
