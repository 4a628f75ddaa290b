package submit

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"github.com/mailfwd/mailfwd/pkg/sink"
	"github.com/mailfwd/mailfwd/pkg/testenv"
)

// run is mailfwd-sendmail in-process against server, with stdin.
func runSendmail(t *testing.T, server, stdin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	env := map[string]string{"MAILFWD_SENDMAIL_CONFIG": filepath.Join(t.TempDir(), "none.conf"), "LOGNAME": "tester"}
	// An explicit config path that does not exist is an error; write an empty one.
	if err := os.WriteFile(env["MAILFWD_SENDMAIL_CONFIG"], []byte("server = "+server+"\nqualify-domain = host.test\nhelo = client.test\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code = Main(context.Background(), "sendmail", args, IO{Stdin: strings.NewReader(stdin), Stdout: &out, Stderr: &errOut, Getenv: func(k string) string { return env[k] }})
	return code, out.String(), errOut.String()
}

func TestSubmitExitCodes(t *testing.T) {
	msg := "To: a@x.test, b@y.test\nSubject: s\n\nbody\n"
	for _, tc := range []struct {
		name   string
		cfg    sink.Config
		code   int
		stderr string
	}{
		{"accepted", sink.Config{}, ExOK, ""},
		{"one recipient 550: nothing sent, EX_NOUSER", sink.Config{OnRcpt: func(r string, _ int) *smtp.SMTPError {
			if r == "b@y.test" {
				return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "User unknown"}
			}
			return nil
		}}, ExNoUser, "b@y.test... 550 5.1.1 User unknown"},
		{"recipient 450: EX_TEMPFAIL", sink.Config{OnRcpt: func(string, int) *smtp.SMTPError {
			return &smtp.SMTPError{Code: 450, EnhancedCode: smtp.EnhancedCode{4, 2, 1}, Message: "try later"}
		}}, ExTempFail, "try again later"},
		{"DATA 451: EX_TEMPFAIL", sink.Config{OnData: func(string, []string, int) *smtp.SMTPError {
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "store failed"}
		}}, ExTempFail, "451 4.3.0 store failed"},
		{"DATA 554: EX_UNAVAILABLE", sink.Config{OnData: func(string, []string, int) *smtp.SMTPError {
			return &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "no"}
		}}, ExUnavailable, "554 5.7.1 no"},
		{"DATA 552: EX_DATAERR", sink.Config{OnData: func(string, []string, int) *smtp.SMTPError {
			return &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4}, Message: "too big"}
		}}, ExDataErr, "too big"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := sink.New(tc.cfg)
			addr := s.Start(t, "127.0.0.1:0")
			code, _, stderr := runSendmail(t, addr, msg, "-t", "-i")
			if code != tc.code {
				t.Fatalf("exit %d, want %d; stderr:\n%s", code, tc.code, stderr)
			}
			if !strings.Contains(stderr, tc.stderr) {
				t.Errorf("stderr %q lacks %q", stderr, tc.stderr)
			}
			if want := map[bool]int{true: 1, false: 0}[tc.code == ExOK]; tc.cfg.OnData == nil && s.Count() != want {
				t.Errorf("sink got %d messages, want %d (all recipients or none)", s.Count(), want)
			}
		})
	}
}

func TestSubmitIngressDown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	code, _, stderr := runSendmail(t, addr, "x\n", "a@x.test")
	if code != ExTempFail || !strings.Contains(stderr, "cannot connect") {
		t.Fatalf("exit %d, stderr %q; want 75 and a clear message", code, stderr)
	}
}

func TestSubmitSizeLimits(t *testing.T) {
	s := sink.New(sink.Config{})
	addr := s.Start(t, "127.0.0.1:0")
	big := "Subject: big\n\n" + strings.Repeat("0123456789abcdef\n", 200)
	code, _, stderr := runSendmail(t, addr, big, "--max-message-size=2048", "-i", "a@x.test")
	if code != ExDataErr || !strings.Contains(stderr, "larger than 2048") {
		t.Fatalf("exit %d, stderr %q; want 65 naming the limit", code, stderr)
	}
	if s.Connections() != 0 {
		t.Errorf("connected to the ingress for a message it cannot take")
	}
	// The ingress's SIZE is smaller than ours: refused before MAIL.
	srv := acceptAllServer()
	srv.MaxMessageBytes = 1500
	srv.Domain = "small.test"
	addr = testenv.ServeSMTP(t, srv)
	code, _, stderr = runSendmail(t, addr, big, "-i", "a@x.test")
	if code != ExDataErr || !strings.Contains(stderr, "SIZE 1500") {
		t.Fatalf("exit %d, stderr %q; want 65 naming the ingress's SIZE", code, stderr)
	}
}

func TestSubmitVerboseAndBytes(t *testing.T) {
	s := sink.New(sink.Config{})
	addr := s.Start(t, "127.0.0.1:0")
	in := "To: a@x.test\nBcc: secret@y.test\nSubject: dialog\n\n.leading dot\nsecret body line\n"
	code, stdout, stderr := runSendmail(t, addr, in, "-t", "-i", "-v", "-f", "me@host.test")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	for _, want := range []string{">>> EHLO client.test", ">>> MAIL FROM:<me@host.test>", ">>> RCPT TO:<a@x.test>", ">>> RCPT TO:<secret@y.test>", ">>> DATA", "354 ", ">>> .", "250 2.0.0", "Sent (", ">>> QUIT"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("-v output lacks %q:\n%s", want, stdout)
		}
	}
	if strings.Contains(stdout, "secret body line") {
		t.Errorf("-v shows the message body:\n%s", stdout)
	}
	m := s.Messages()[0]
	if m.From != "me@host.test" || strings.Join(m.Recipients, ",") != "a@x.test,secret@y.test" {
		t.Errorf("envelope %s → %v", m.From, m.Recipients)
	}
	data := string(m.Data)
	wantHead := "To: a@x.test\r\nSubject: dialog\r\nFrom: <me@host.test>\r\nDate: "
	if !strings.HasPrefix(data, wantHead) || !strings.HasSuffix(data, "\r\n\r\n.leading dot\r\nsecret body line\r\n") || strings.Contains(data, "Bcc") {
		t.Errorf("delivered bytes:\n%q", data)
	}
}

func TestSubmitTLS(t *testing.T) {
	cert := testenv.SelfSignedCert(t, "127.0.0.1", "localhost")
	tlsSink := sink.New(sink.Config{TLS: &tls.Config{Certificates: []tls.Certificate{cert}}})
	tlsAddr := tlsSink.Start(t, "127.0.0.1:0")
	plain := sink.New(sink.Config{})
	plainAddr := plain.Start(t, "127.0.0.1:0")

	if code, _, stderr := runSendmail(t, tlsAddr, "x\n", "a@x.test"); code != 0 || !tlsSink.Messages()[0].TLS {
		t.Fatalf("tls=may with STARTTLS offered: exit %d %s, TLS used: %v", code, stderr, code == 0 && tlsSink.Messages()[0].TLS)
	}
	if code, _, stderr := runSendmail(t, plainAddr, "x\n", "--tls=encrypt", "a@x.test"); code != ExProtocol || !strings.Contains(stderr, "STARTTLS") {
		t.Errorf("tls=encrypt without STARTTLS: exit %d %q, want 76", code, stderr)
	}
	if plain.Count() != 0 {
		t.Errorf("sent in the clear despite tls=encrypt")
	}
	if code, _, stderr := runSendmail(t, tlsAddr, "x\n", "--tls=verify", "a@x.test"); code != ExProtocol || !strings.Contains(stderr, "certificate") {
		t.Errorf("tls=verify against a self-signed certificate: exit %d %q, want 76", code, stderr)
	}
	if code, _, stderr := runSendmail(t, plainAddr, "x\n", "a@x.test"); code != 0 || plain.Count() != 1 {
		t.Errorf("tls=may without STARTTLS: exit %d %s", code, stderr)
	}
}

func TestConfigErrors(t *testing.T) {
	var out, errOut bytes.Buffer
	code := Main(context.Background(), "sendmail", []string{"-C", "/nonexistent/sendmail.conf", "a@x.test"},
		IO{Stdin: strings.NewReader("x"), Stdout: &out, Stderr: &errOut, Getenv: func(string) string { return "" }})
	if code != ExConfig {
		t.Errorf("-C missing file: exit %d, want 78", code)
	}
	code = Main(context.Background(), "sendmail", []string{"-Z"}, IO{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errOut, Getenv: func(string) string { return "" }})
	if code != ExUsage {
		t.Errorf("unknown option: exit %d, want 64", code)
	}
	// No recipients and no -t: refused before reading stdin (a reader that
	// fails shows it was never read).
	code = Main(context.Background(), "sendmail", nil, IO{Stdin: failingReader{}, Stdout: &out, Stderr: &errOut, Getenv: func(string) string { return "" }})
	if code != ExUsage || !strings.Contains(errOut.String(), "no recipients") {
		t.Errorf("no recipients: exit %d %q, want 64", code, errOut.String())
	}
	out.Reset()
	code = Main(context.Background(), "sendmail", []string{"-d0", "-bt"}, IO{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errOut, Getenv: func(string) string { return "" }})
	if code != 0 || !strings.Contains(out.String(), "Version ") {
		t.Errorf("-d0 -bt: exit %d, output %q; want a Version line (sendmail -d0 -bt < /dev/null | grep -i Version)", code, out.String())
	}
}

type acceptAll struct{}

// acceptAllServer is an SMTP server that takes (and drops) every message.
func acceptAllServer() *smtp.Server {
	return smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) { return acceptAll{}, nil }))
}

func (acceptAll) Mail(string, *smtp.MailOptions) error { return nil }
func (acceptAll) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (acceptAll) Data(r io.Reader) error               { _, err := io.Copy(io.Discard, r); return err }
func (acceptAll) Reset()                               {}
func (acceptAll) Logout() error                        { return nil }

type failingReader struct{}

func (failingReader) Read([]byte) (int, error) { return 0, io.ErrUnexpectedEOF }

// TestSubmitEndlessReply: an ingress that never ends its EHLO reply costs a
// bounded read and a temporary failure, not memory without end.
func TestSubmitEndlessReply(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		line := []byte("250-" + strings.Repeat("x", 500) + "\r\n")
		_, _ = c.Write([]byte("220 hostile.test ESMTP\r\n"))
		for i := 0; i < 100000; i++ { // up to 50 MB, far more than the bound
			if _, err := c.Write(line); err != nil {
				return // the client gave up: what this test wants
			}
		}
		// Keep the connection open (closing with the client's EHLO unread
		// would reset it, and the client would see that, not the bound).
		_, _ = io.Copy(io.Discard, c)
	}()
	code, _, stderr := runSendmail(t, ln.Addr().String(), "x\n", "a@x.test")
	if code != ExTempFail || !strings.Contains(stderr, "more than") {
		t.Fatalf("exit %d, stderr %q; want 75 naming the bound", code, stderr)
	}
}

// TestSubmitTooManyRecipients: more recipients than the ingress's RCPTMAX
// is refused before MAIL, as a failure a retry will not fix.
func TestSubmitTooManyRecipients(t *testing.T) {
	srv := acceptAllServer()
	srv.MaxRecipients = 2
	srv.Domain = "limits.test"
	addr := testenv.ServeSMTP(t, srv)
	code, _, stderr := runSendmail(t, addr, "x\n", "a@x.test", "b@x.test", "c@x.test")
	if code != ExUnavailable || !strings.Contains(stderr, "RCPTMAX=2") {
		t.Fatalf("exit %d, stderr %q; want 69 naming RCPTMAX", code, stderr)
	}
	if code, _, stderr := runSendmail(t, addr, "x\n", "a@x.test", "b@x.test"); code != 0 {
		t.Fatalf("two recipients: exit %d %s", code, stderr)
	}
}
