package submit

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
)

// Mode is what an invocation does (sendmail's -b…, -q, -I).
type Mode string

// The modes.
const (
	ModeDeliver    Mode = "deliver"    // -bm (default): read a message, submit it
	ModeQueueList  Mode = "queue-list" // -bp, mailq: mailfwdctl queue list
	ModeQueueStats Mode = "queue-size" // -bP: mailfwdctl queue stats
	ModeQueueRun   Mode = "queue-run"  // -q, -qR…, -qS…, -qI…: mailfwdctl queue flush
	ModeVerify     Mode = "verify"     // -bv addr…: mailfwdctl route
	ModeTest       Mode = "test"       // -bt: addresses from stdin to mailfwdctl route; with -d0 the version
	ModeAliases    Mode = "aliases"    // -bi, newaliases: nothing to do
	ModeVersion    Mode = "version"    // --version, or -d0 without -bt
)

// Invocation is one parsed command line.
type Invocation struct {
	Mode         Mode
	Extract      bool   // -t: recipients from To:/Cc:/Bcc:
	IgnoreDots   bool   // -i, -oi: a line with a single dot is data
	From         string // -f / -r: envelope sender
	FromSet      bool
	FullName     string // -F
	Verbose      bool   // -v
	Body         string // -B 7BIT|8BITMIME
	DSNNotify    string // -N
	DSNReturn    string // -R full|hdrs
	EnvID        string // -V
	Debug        bool   // -d…
	ConfigFile   string // -C / --config
	Recipients   []string
	QueueFilters []string    // mailfwdctl queue flush flags from -qR/-qS/-qI and -q!…
	Settings     [][2]string // --key=value overrides, in order
	Help         bool
	Notes        []string // accepted options with no effect, said with -v
}

// Parse reads sendmail's command line, getopt style ("-ti", "-fme",
// "-f me", "-qR example.com", "-qRexample.com", "-oi", "-O Opt=v").
// prog is argv[0]: invoked as mailq or newaliases it sets the mode.
func Parse(prog string, args []string) (*Invocation, error) {
	inv := &Invocation{Mode: ModeDeliver}
	switch filepath.Base(prog) {
	case "mailq":
		inv.Mode = ModeQueueList
	case "newaliases":
		inv.Mode = ModeAliases
	}
	modeSet := false
	setMode := func(m Mode) error {
		if modeSet && inv.Mode != m {
			return fmt.Errorf("conflicting modes %s and %s", inv.Mode, m)
		}
		inv.Mode, modeSet = m, true
		return nil
	}
	i := 0
	next := func(opt byte, rest string) (string, error) {
		if rest != "" {
			return rest, nil
		}
		if i+1 >= len(args) {
			return "", fmt.Errorf("option -%c needs a value", opt)
		}
		i++
		return args[i], nil
	}
	str := func(p *string) func(byte, string) error {
		return func(_ byte, v string) error { *p = v; return nil }
	}
	// oneOf sets *p to the value, normalized by norm, if it is one of allowed.
	oneOf := func(p *string, norm func(string) string, want string, allowed ...string) func(byte, string) error {
		return func(c byte, v string) error {
			if n := norm(v); slices.Contains(allowed, n) {
				*p = n
				return nil
			}
			return fmt.Errorf("-%c %s: want %s", c, v, want)
		}
	}
	noEffect := func(c byte, _ string) error {
		inv.Notes = append(inv.Notes, fmt.Sprintf("-%c has no effect", c))
		return nil
	}
	// valued are the options that take a value, and what each does with it.
	valued := map[byte]func(c byte, v string) error{
		'f': func(_ byte, v string) error {
			inv.From, inv.FromSet = strings.TrimSuffix(strings.TrimPrefix(v, "<"), ">"), true
			return nil
		},
		'F': str(&inv.FullName),
		'B': oneOf(&inv.Body, strings.ToUpper, "7BIT or 8BITMIME", "7BIT", "8BITMIME"),
		'N': str(&inv.DSNNotify),
		'R': oneOf(&inv.DSNReturn, strings.ToLower, "full or hdrs", "full", "hdrs"),
		'V': str(&inv.EnvID),
		'C': str(&inv.ConfigFile),
		'h': noEffect, 'L': noEffect, 'p': noEffect, 'A': noEffect, 'e': noEffect,
		'b': func(_ byte, v string) error { return parseB(inv, v, setMode) },
		'o': func(_ byte, v string) error { return parseO(inv, v) },
		'O': func(_ byte, v string) error { return parseBigO(inv, v) },
	}
	valued['r'] = valued['f']
	for ; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			inv.Recipients = append(inv.Recipients, args[i+1:]...)
			break
		}
		if long, ok := strings.CutPrefix(a, "--"); ok {
			k, v, hasV := strings.Cut(long, "=")
			switch k {
			case "help":
				inv.Help = true
				continue
			case "version":
				if err := setMode(ModeVersion); err != nil {
					return nil, err
				}
				continue
			}
			if !hasV {
				if i+1 >= len(args) {
					return nil, fmt.Errorf("option --%s needs a value", k)
				}
				i++
				v = args[i]
			}
			if k == "config" {
				inv.ConfigFile = v
				continue
			}
			inv.Settings = append(inv.Settings, [2]string{k, v})
			continue
		}
		if len(a) < 2 || a[0] != '-' {
			inv.Recipients = append(inv.Recipients, a)
			continue
		}
		for j := 1; j < len(a); j++ {
			c, rest := a[j], a[j+1:]
			if set, ok := valued[c]; ok {
				// The value is the rest of this argument or the next one.
				v, err := next(c, rest)
				if err == nil {
					err = set(c, v)
				}
				if err != nil {
					return nil, err
				}
				break
			}
			var err error
			consumed := false // the option took the rest of this argument
			switch c {
			case 't':
				inv.Extract = true
			case 'i':
				inv.IgnoreDots = true
			case 'v':
				inv.Verbose = true
			case 'm', 's', 'c', 'G', 'U':
				inv.Notes = append(inv.Notes, fmt.Sprintf("-%c has no effect", c))
			case 'n':
				return nil, fmt.Errorf("-n (no aliasing) is not possible: aliases are applied by the ingress's policy")
			case 'I':
				err = setMode(ModeAliases)
			case 'd':
				inv.Debug = true
				if rest == "" && i+1 < len(args) && len(args[i+1]) > 0 && args[i+1][0] >= '0' && args[i+1][0] <= '9' {
					i++
				}
				consumed = true
			case 'q':
				if err = setMode(ModeQueueRun); err == nil {
					err = parseQ(inv, rest, func() (string, error) { return next('q', "") })
				}
				consumed = true
			case 'X':
				return nil, fmt.Errorf("-X (traffic log) is not a mailfwd-sendmail option: record SMTP sessions with `mailfwdctl trace --client IP` (what the ingress receives) or `mailfwdctl trace --destination HOST` (deliveries); -v shows this submission's dialog")
			case 'M', 'D', 'Q', 'T':
				return nil, fmt.Errorf("-%c is not supported by mailfwd-sendmail", c)
			default:
				return nil, fmt.Errorf("unknown option -%c", c)
			}
			if err != nil {
				return nil, err
			}
			if consumed {
				break
			}
		}
	}
	if inv.Debug && inv.Mode == ModeDeliver && !modeSet && len(inv.Recipients) == 0 && !inv.Extract {
		inv.Mode = ModeVersion
	}
	return inv, nil
}

func parseB(inv *Invocation, v string, setMode func(Mode) error) error {
	switch v {
	case "m":
		return setMode(ModeDeliver)
	case "p":
		return setMode(ModeQueueList)
	case "P":
		return setMode(ModeQueueStats)
	case "v":
		return setMode(ModeVerify)
	case "t":
		return setMode(ModeTest)
	case "i":
		return setMode(ModeAliases)
	case "d", "D":
		return fmt.Errorf("-b%s (daemon mode): the daemon is mailfwd-ingress; mailfwd-sendmail only submits", v)
	case "s":
		return fmt.Errorf("-bs (SMTP on stdin) is not supported: connect to the ingress over SMTP instead (server = … in %s)", DefaultConfigFile)
	case "h", "H":
		return fmt.Errorf("-b%s (host status) does not exist in mailfwd: each worker keeps its own; see the delivery logs", v)
	}
	return fmt.Errorf("unknown mode -b%s", v)
}

// parseO reads the old single-letter options: -oi, -oem, -odb, -oQdir.
func parseO(inv *Invocation, v string) error {
	if v == "" {
		return fmt.Errorf("-o needs an option letter")
	}
	switch v[0] {
	case 'i':
		inv.IgnoreDots = v == "i" || strings.EqualFold(v[1:], "true")
		return nil
	case 'e', 'd', 'm', 'L', 'b', 'G':
		inv.Notes = append(inv.Notes, "-o"+v+" has no effect (errors always go to stderr and the exit code; the ingress queues at once)")
		return nil
	case 'Q':
		return fmt.Errorf("-oQ%s: mailfwd has no queue directories; a queue moved aside is a held domain: `mailfwdctl queue hold --domain D`, later `mailfwdctl queue release --domain D`", v[1:])
	}
	return fmt.Errorf("-o%s: this option has no meaning for mailfwd-sendmail", v)
}

// parseBigO reads -O Option=value.
func parseBigO(inv *Invocation, v string) error {
	k, val, _ := strings.Cut(v, "=")
	switch strings.ToLower(k) {
	case "ignoredots":
		inv.IgnoreDots = val == "" || strings.EqualFold(val, "true")
		return nil
	case "errormode", "deliverymode", "loglevel", "metoo", "sendmimeerrors":
		inv.Notes = append(inv.Notes, "-O "+v+" has no effect")
		return nil
	case "queuedirectory":
		return parseO(inv, "Q"+val)
	}
	if strings.HasPrefix(strings.ToLower(k), "timeout.queue") {
		return fmt.Errorf("-O %s: queue timeouts are the workers' --queue-return and --warn-after; to give held mail more time use `mailfwdctl queue release --domain D --extend 120h`", v)
	}
	return fmt.Errorf("-O %s: this option has no meaning for mailfwd-sendmail", v)
}

// parseQ maps -q[!]{R,S,I}substr to mailfwdctl queue flush filters.
func parseQ(inv *Invocation, rest string, nextArg func() (string, error)) error {
	switch {
	case rest == "" || rest == "f":
		return nil
	case rest[0] >= '0' && rest[0] <= '9':
		return fmt.Errorf("-q%s (a periodic queue run): mailfwd's workers run the queue all the time; `-q` alone makes deferred mail due now", rest)
	case rest[0] == 'p':
		return fmt.Errorf("-q%s (persistent queue runners) is not needed: the workers are always running", rest)
	}
	neg := false
	if rest[0] == '!' {
		neg, rest = true, rest[1:]
	}
	if rest == "" {
		return fmt.Errorf("-q!: want -q!R, -q!S or -q!I")
	}
	kind, val := rest[0], rest[1:]
	if val == "" {
		v, err := nextArg()
		if err != nil {
			return fmt.Errorf("-q%c needs a value", kind)
		}
		val = v
	}
	var flag string
	switch {
	case kind == 'R' && !neg:
		flag = "--recipient"
	case kind == 'R':
		flag = "--not-recipient"
	case kind == 'S' && !neg:
		flag = "--sender"
	case kind == 'S':
		flag = "--not-sender"
	case kind == 'I' && !neg:
		flag = "--id"
	case kind == 'I':
		flag = "--not-id"
	case kind == 'G' || kind == 'Q' || kind == 'L':
		return fmt.Errorf("-q%c (queue groups, quarantine) does not exist in mailfwd; see `mailfwdctl queue --help`", kind)
	default:
		return fmt.Errorf("-q%c: want -qR, -qS or -qI (or -q!R…)", kind)
	}
	inv.QueueFilters = append(inv.QueueFilters, flag+"="+val)
	return nil
}
