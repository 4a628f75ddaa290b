package submit

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/emersion/go-smtp"
)

// Envelope is what one submission sends.
type Envelope struct {
	From       string
	Recipients []string
	Data       []byte
	Body       string // -B: "", 7BIT or 8BITMIME (informational: go-smtp declares BODY=8BITMIME whenever the ingress offers it)
	DSNNotify  string // -N: never, or success,failure,delay
	DSNReturn  string // -R: full or hdrs
	EnvID      string // -V
}

// Result is the ingress's answer to an accepted message.
type Result struct {
	QueueID string
	Reply   string
}

// Submit sends env to the ingress in one transaction, to every recipient or
// to none: when any recipient is refused the transaction is reset, nothing
// is sent, and the error's code is ExNoUser (a 5xx) or ExTempFail (a 4xx),
// so a script that retries on a non-zero exit never makes duplicates.
// transcript, if set, receives the dialog as sendmail -v shows it; warn gets
// notes for the user (stderr).
func Submit(ctx context.Context, cfg Config, env Envelope, transcript, warn io.Writer) (*Result, error) {
	host, _, _ := net.SplitHostPort(cfg.Server)
	say := func(format string, args ...any) {
		if transcript != nil {
			fmt.Fprintf(transcript, format+"\n", args...)
		}
	}
	rcptList := strings.Join(env.Recipients, ", ")
	say("%s... Connecting to %s via mailfwd...", rcptList, cfg.Server)
	var tw *transcriptWriter
	if transcript != nil {
		tw = &transcriptWriter{w: transcript}
	}
	c, err := connect(ctx, cfg, host, tw)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if c.tls {
		say("(TLS established)")
	}
	if ok, params := c.Extension("LIMITS"); ok {
		// RFC 9422: more recipients than RCPTMAX would be refused one by one
		// with 452, which all-or-none turns into a retry that never works.
		for _, p := range strings.Fields(params) {
			if v, ok := strings.CutPrefix(strings.ToUpper(p), "RCPTMAX="); ok {
				if max, err := strconv.Atoi(v); err == nil && max > 0 && len(env.Recipients) > max {
					return nil, fail(ExUnavailable, "%d recipients, more than the ingress takes in one message (RCPTMAX=%d, its --max-recipients); nothing was sent: split the list", len(env.Recipients), max)
				}
			}
		}
	}
	size := int64(len(env.Data)) + int64(bytes.Count(env.Data, []byte("\n"))) // bare LFs become CRLF
	if max, ok := c.MaxMessageSize(); ok && max > 0 && size > int64(max) {
		return nil, fail(ExDataErr, "message of about %d bytes is larger than the ingress accepts (SIZE %d); nothing was sent", size, max)
	}
	// go-smtp declares BODY=8BITMIME whenever the ingress offers it, which
	// covers -B 7BIT and -B 8BITMIME alike.
	opts := &smtp.MailOptions{Size: size}
	for _, a := range append([]string{env.From}, env.Recipients...) {
		if hasEightBit([]byte(a)) {
			opts.UTF8 = true
		}
	}
	dsn, _ := c.Extension("DSN")
	var rcptOpts *smtp.RcptOptions
	if env.DSNNotify != "" || env.DSNReturn != "" || env.EnvID != "" {
		if !dsn {
			fmt.Fprintf(warn, "mailfwd-sendmail: the ingress does not offer DSN; -N/-R/-V are not passed on\n")
		} else {
			opts.Return = smtp.DSNReturn(strings.ToUpper(env.DSNReturn))
			opts.EnvelopeID = env.EnvID
			if env.DSNNotify != "" {
				rcptOpts = &smtp.RcptOptions{}
				for _, n := range strings.Split(env.DSNNotify, ",") {
					rcptOpts.Notify = append(rcptOpts.Notify, smtp.DSNNotify(strings.ToUpper(strings.TrimSpace(n))))
				}
			}
		}
	}
	if err := c.Mail(env.From, opts); err != nil {
		return nil, replyError("MAIL FROM:<"+env.From+">", err, false)
	}
	var refused []string
	code := 0
	for _, r := range env.Recipients {
		if err := c.Rcpt(r, rcptOpts); err != nil {
			e := replyError("RCPT TO:<"+r+">", err, true)
			var se *smtp.SMTPError
			if !errors.As(err, &se) {
				return nil, e
			}
			refused = append(refused, fmt.Sprintf("%s... %s", r, smtpText(se)))
			if se.Code >= 500 {
				code = ExNoUser
			} else if code == 0 {
				code = ExTempFail
			}
		}
	}
	if len(refused) > 0 {
		_ = c.Reset()
		_ = c.Quit()
		what := "refused"
		if code == ExTempFail {
			what = "refused for now (try again later)"
		}
		return nil, fail(code, "%s\nrecipients %s; nothing was sent to anyone", strings.Join(refused, "\n"), what)
	}
	w, err := c.Data()
	if err != nil {
		return nil, replyError("DATA", err, false)
	}
	if _, err := w.Write(env.Data); err != nil {
		return nil, fail(ExTempFail, "sending the message to %s: %v; nothing was queued, try again later", cfg.Server, err)
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		var se *smtp.SMTPError
		if !errors.As(err, &se) {
			return nil, fail(ExTempFail, "no answer from %s after the message: %v; it may or may not have been queued", cfg.Server, err)
		}
		return nil, replyError("end of DATA", err, false)
	}
	res := &Result{Reply: resp.StatusText}
	if i := strings.LastIndex(resp.StatusText, " "); i >= 0 {
		res.QueueID = resp.StatusText[i+1:]
	}
	say("%s... Sent (%s)", rcptList, resp.StatusText)
	say("Closing connection to %s", cfg.Server)
	_ = c.Quit()
	return res, nil
}

func tlsConfig(cfg Config, host string) (*tls.Config, error) {
	t := &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}
	if cfg.TLSServerName != "" {
		t.ServerName = cfg.TLSServerName
	}
	if cfg.TLS != "verify" {
		// may and encrypt: opportunistic, as between MTAs (RFC 7435).
		t.InsecureSkipVerify = true
		return t, nil
	}
	if cfg.TLSCAFile != "" {
		pem, err := os.ReadFile(cfg.TLSCAFile)
		if err != nil {
			return nil, fail(ExConfig, "tls-ca-file: %v", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fail(ExConfig, "tls-ca-file %s: no PEM certificates", cfg.TLSCAFile)
		}
		t.RootCAs = pool
	}
	return t, nil
}

func smtpText(se *smtp.SMTPError) string {
	if se.EnhancedCode != (smtp.EnhancedCode{}) && se.EnhancedCode != smtp.NoEnhancedCode {
		return fmt.Sprintf("%d %d.%d.%d %s", se.Code, se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2], se.Message)
	}
	return fmt.Sprintf("%d %s", se.Code, se.Message)
}

// replyError maps an SMTP reply to sendmail's exit codes: 4xx is
// EX_TEMPFAIL, a recipient's 5xx EX_NOUSER, another 5xx EX_UNAVAILABLE
// (EX_DATAERR for a message too large); a lost connection is temporary.
func replyError(stage string, err error, rcpt bool) error {
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		return fail(ExTempFail, "%s: %v; nothing was sent, try again later", stage, err)
	}
	switch {
	case se.Code >= 400 && se.Code < 500:
		return fail(ExTempFail, "%s: %s; nothing was sent, try again later", stage, smtpText(se))
	case rcpt:
		return fail(ExNoUser, "%s: %s", stage, smtpText(se))
	case se.Code == 552 || se.EnhancedCode == smtp.EnhancedCode{5, 3, 4}:
		return fail(ExDataErr, "%s: %s; nothing was sent", stage, smtpText(se))
	case se.Code >= 500:
		return fail(ExUnavailable, "%s: %s; nothing was sent", stage, smtpText(se))
	}
	return fail(ExProtocol, "%s: unexpected reply %s", stage, smtpText(se))
}

func hasEightBit(b []byte) bool {
	for _, c := range b {
		if c >= 0x80 {
			return true
		}
	}
	return false
}

// transcriptWriter shows the SMTP dialog as sendmail -v does: the
// server's lines as they come, the client's prefixed with ">>> ", the message
// itself left out (a single ">>> ." for it). It reads go-smtp's DebugWriter
// stream, which carries both directions as plaintext (also after STARTTLS):
// a reply line starts with three digits, a command never does.
type transcriptWriter struct {
	mu      sync.Mutex
	w       io.Writer
	buf     []byte
	dataCmd bool // DATA sent, waiting for 354
	inData  bool
	tail    []byte // last bytes of the message, to find "\r\n.\r\n"
}

func (t *transcriptWriter) Write(p []byte) (int, error) {
	n := len(p)
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.inData {
		t.tail = append(t.tail, p...)
		i := bytes.Index(t.tail, []byte("\r\n.\r\n"))
		if i < 0 {
			if len(t.tail) > 4 {
				t.tail = append([]byte(nil), t.tail[len(t.tail)-4:]...)
			}
			return n, nil
		}
		t.inData = false
		fmt.Fprintln(t.w, ">>> .")
		p = t.tail[i+5:]
		t.tail = nil
	}
	t.buf = append(t.buf, p...)
	for {
		i := bytes.IndexByte(t.buf, '\n')
		if i < 0 {
			break
		}
		line := strings.TrimRight(string(t.buf[:i]), "\r")
		t.buf = t.buf[i+1:]
		if isReply(line) {
			fmt.Fprintln(t.w, line)
			if t.dataCmd && strings.HasPrefix(line, "354") {
				t.dataCmd, t.inData, t.tail = false, true, []byte("\r\n")
				t.buf = nil
				break
			}
			t.dataCmd = false
			continue
		}
		if strings.HasPrefix(strings.ToUpper(line), "AUTH ") {
			line = line[:5] + "<credentials not shown>"
		}
		fmt.Fprintln(t.w, ">>> "+line)
		t.dataCmd = strings.EqualFold(line, "DATA")
	}
	if len(t.buf) > 4096 {
		t.buf = t.buf[:0]
	}
	return n, nil
}

func isReply(line string) bool {
	return len(line) >= 3 && line[0] >= '2' && line[0] <= '5' && line[1] >= '0' && line[1] <= '9' && line[2] >= '0' && line[2] <= '9' &&
		(len(line) == 3 || line[3] == ' ' || line[3] == '-')
}

// client is an SMTP client after EHLO (and STARTTLS when used).
type client struct {
	*smtp.Client
	tls bool
}

// connect dials the ingress and says EHLO; STARTTLS as tls says: none
// never, may when offered, encrypt and verify always (verify also checks
// the certificate).
func connect(ctx context.Context, cfg Config, host string, tw *transcriptWriter) (*client, error) {
	dial := func() (net.Conn, error) {
		d := net.Dialer{Timeout: cfg.ConnectTimeout}
		conn, err := d.DialContext(ctx, "tcp", cfg.Server)
		if err != nil {
			var dnsErr *net.DNSError
			if errors.As(err, &dnsErr) && dnsErr.IsNotFound {
				return nil, fail(ExNoHost, "ingress %s: host name unknown (%v); set server = host:port in %s", cfg.Server, err, DefaultConfigFile)
			}
			return nil, fail(ExTempFail, "cannot connect to the ingress %s: %v; nothing was sent, try again later", cfg.Server, err)
		}
		if dl, ok := ctx.Deadline(); ok {
			_ = conn.SetDeadline(dl)
		}
		return &boundedConn{Conn: conn, left: maxSessionReplies}, nil
	}
	debug := func(c *smtp.Client) {
		if tw != nil {
			c.DebugWriter = tw
		}
	}
	withTLS := func() (*client, error) {
		tcfg, err := tlsConfig(cfg, host)
		if err != nil {
			return nil, err
		}
		conn, err := dial()
		if err != nil {
			return nil, err
		}
		// The EHLO before STARTTLS says "localhost" (go-smtp's); the one
		// after it, which the ingress records, says cfg.Helo.
		c, err := smtp.NewClientStartTLS(conn, tcfg)
		if err != nil {
			return nil, fail(ExProtocol, "STARTTLS with %s failed: %v (tls = %s); nothing was sent", cfg.Server, err, cfg.TLS)
		}
		debug(c)
		if err := c.Hello(cfg.Helo); err != nil {
			c.Close()
			var se *smtp.SMTPError
			if !errors.As(err, &se) {
				// The handshake runs with the first write after STARTTLS.
				return nil, fail(ExProtocol, "TLS with %s failed: %v (tls = %s); nothing was sent", cfg.Server, err, cfg.TLS)
			}
			return nil, replyError("EHLO", err, false)
		}
		return &client{Client: c, tls: true}, nil
	}
	if cfg.TLS == "encrypt" || cfg.TLS == "verify" {
		return withTLS()
	}
	conn, err := dial()
	if err != nil {
		return nil, err
	}
	c := smtp.NewClient(conn)
	debug(c)
	if err := c.Hello(cfg.Helo); err != nil {
		c.Close()
		return nil, replyError("greeting/EHLO", err, false)
	}
	if ok, _ := c.Extension("STARTTLS"); ok && cfg.TLS == "may" {
		_ = c.Quit()
		c.Close()
		return withTLS()
	}
	return &client{Client: c}, nil
}

// maxSessionReplies bounds what one session reads from the ingress: its
// replies are a few hundred bytes; a peer that keeps talking ("250-" lines
// without end) ends the session instead of growing memory.
const maxSessionReplies = 1 << 20

type boundedConn struct {
	net.Conn
	left int
}

func (b *boundedConn) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, fmt.Errorf("the ingress sent more than %d bytes of replies", maxSessionReplies)
	}
	if len(p) > b.left {
		p = p[:b.left]
	}
	n, err := b.Conn.Read(p)
	b.left -= n
	return n, err
}
