package sink_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailfwd/mailfwd/pkg/sink"
	"github.com/mailfwd/mailfwd/pkg/testenv"
)

// send runs one SMTP transaction with go-smtp's client and returns the
// per-recipient RCPT errors and the DATA error.
func send(t *testing.T, addr string, from string, rcpts []string, body string) (rcptErrs []error, dataErr error) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	c := smtp.NewClient(conn)
	defer c.Close()
	if err := c.Hello("client.test"); err != nil {
		t.Fatalf("EHLO: %v", err)
	}
	if err := c.Mail(from, nil); err != nil {
		t.Fatalf("MAIL FROM: %v", err)
	}
	ok := 0
	for _, r := range rcpts {
		err := c.Rcpt(r, nil)
		rcptErrs = append(rcptErrs, err)
		if err == nil {
			ok++
		}
	}
	if ok == 0 {
		return rcptErrs, nil
	}
	w, err := c.Data()
	if err != nil {
		t.Fatalf("DATA: %v", err)
	}
	if _, err := w.Write([]byte(body)); err != nil {
		t.Fatalf("write body: %v", err)
	}
	dataErr = w.Close()
	if err := c.Quit(); err != nil {
		t.Logf("QUIT: %v", err)
	}
	return rcptErrs, dataErr
}

func TestRecordsMessages(t *testing.T) {
	s := sink.New(sink.Config{})
	addr := s.Start(t, "127.0.0.1:0")

	mms := "+4512345678/TYPE=PLMN@mms.mnc001.mcc238.gprs"
	body := "Subject: hi\r\n\r\n.leading dot\r\n..two dots\r\nend\r\n"
	rcptErrs, dataErr := send(t, addr, "", []string{mms, "b@example.org"}, body)
	for i, err := range rcptErrs {
		if err != nil {
			t.Fatalf("rcpt %d: %v", i, err)
		}
	}
	if dataErr != nil {
		t.Fatalf("data: %v", dataErr)
	}
	msgs := s.Messages()
	if len(msgs) != 1 || s.Count() != 1 {
		t.Fatalf("got %d messages (Count %d), want 1", len(msgs), s.Count())
	}
	m := msgs[0]
	if m.From != "" {
		t.Errorf("From = %q, want null sender", m.From)
	}
	if !slices.Equal(m.Recipients, []string{mms, "b@example.org"}) {
		t.Errorf("Recipients = %q", m.Recipients)
	}
	if string(m.Data) != body {
		t.Errorf("Data = %q, want %q", m.Data, body)
	}
	if m.TLS {
		t.Errorf("TLS = true on a plaintext session")
	}
	if m.RemoteAddr == "" || m.At.IsZero() {
		t.Errorf("RemoteAddr %q / At %v not filled", m.RemoteAddr, m.At)
	}
	if got := s.RecipientsDelivered(); got[mms] != 1 || got["b@example.org"] != 1 || len(got) != 2 {
		t.Errorf("RecipientsDelivered = %v", got)
	}
	if s.Connections() != 1 {
		t.Errorf("Connections = %d, want 1", s.Connections())
	}
}

func TestResponders(t *testing.T) {
	var dataSeen []int
	s := sink.New(sink.Config{
		OnRcpt: func(rcpt string, seen int) *smtp.SMTPError {
			switch {
			case rcpt == "never@example.org":
				return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
			case rcpt == "later@example.org" && seen == 0:
				return &smtp.SMTPError{Code: 450, EnhancedCode: smtp.EnhancedCode{4, 2, 1}, Message: "try later"}
			}
			return nil
		},
		OnData: func(from string, rcpts []string, seen int) *smtp.SMTPError {
			dataSeen = append(dataSeen, seen)
			if seen == 0 {
				return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "first time"}
			}
			return nil
		},
	})
	addr := s.Start(t, "127.0.0.1:0")
	body := "Subject: x\r\n\r\nbody\r\n"

	rcptErrs, dataErr := send(t, addr, "a@example.com", []string{"later@example.org", "never@example.org", "ok@example.org"}, body)
	wantCodes := []int{450, 550, 0}
	for i, err := range rcptErrs {
		code := 0
		var se *smtp.SMTPError
		if errors.As(err, &se) {
			code = se.Code
		}
		if code != wantCodes[i] {
			t.Errorf("first run rcpt %d: code %d, want %d (%v)", i, code, wantCodes[i], err)
		}
	}
	var se *smtp.SMTPError
	if !errors.As(dataErr, &se) || se.Code != 451 {
		t.Fatalf("first DATA: %v, want 451", dataErr)
	}
	if s.Count() != 0 {
		t.Fatalf("Count = %d after a rejected DATA", s.Count())
	}

	rcptErrs, dataErr = send(t, addr, "a@example.com", []string{"later@example.org", "ok@example.org"}, body)
	for i, err := range rcptErrs {
		if err != nil {
			t.Errorf("second run rcpt %d: %v", i, err)
		}
	}
	if dataErr != nil {
		t.Fatalf("second DATA: %v", dataErr)
	}
	if !slices.Equal(dataSeen, []int{0, 1}) {
		t.Errorf("OnData seen = %v, want [0 1]", dataSeen)
	}
	got := s.RecipientsDelivered()
	if got["later@example.org"] != 1 || got["ok@example.org"] != 1 || got["never@example.org"] != 0 {
		t.Errorf("RecipientsDelivered = %v", got)
	}
}

func TestDirOutput(t *testing.T) {
	dir := t.TempDir()
	s := sink.New(sink.Config{Dir: filepath.Join(dir, "spool")})
	dir = filepath.Join(dir, "spool")
	addr := s.Start(t, "127.0.0.1:0")
	body := "Subject: d\r\n\r\nhello\r\n"
	if _, err := send(t, addr, "from@example.com", []string{"x@example.org", "y@example.org"}, body); err != nil {
		t.Fatalf("send: %v", err)
	}
	emls, _ := filepath.Glob(filepath.Join(dir, "*.eml"))
	envs, _ := filepath.Glob(filepath.Join(dir, "*.env"))
	if len(emls) != 1 || len(envs) != 1 {
		t.Fatalf("files: eml %v env %v", emls, envs)
	}
	if strings.TrimSuffix(emls[0], ".eml") != strings.TrimSuffix(envs[0], ".env") {
		t.Errorf("eml %s and env %s do not share a name", emls[0], envs[0])
	}
	data, err := os.ReadFile(emls[0])
	if err != nil {
		t.Fatal(err)
	}
	if string(data) != body {
		t.Errorf("eml = %q, want %q", data, body)
	}
	env, err := os.ReadFile(envs[0])
	if err != nil {
		t.Fatal(err)
	}
	want := "MAIL FROM:<from@example.com>\nRCPT TO:<x@example.org>\nRCPT TO:<y@example.org>\n"
	if string(env) != want {
		t.Errorf("env = %q, want %q", env, want)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".tmp-*")); len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}
}

func TestStartTLSAndWaitCount(t *testing.T) {
	s := sink.New(sink.Config{TLS: testenv.TLSConfig(t)})
	addr := s.Start(t, "127.0.0.1:0")

	errc := make(chan error, 1)
	go func() {
		conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			errc <- err
			return
		}
		c, err := smtp.NewClientStartTLS(conn, &tls.Config{InsecureSkipVerify: true})
		if err != nil {
			errc <- err
			return
		}
		defer c.Close()
		errc <- c.SendMail("a@example.com", []string{"b@example.org"}, bytes.NewReader([]byte("Subject: t\r\n\r\nx\r\n")))
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.WaitCount(ctx, 1); err != nil {
		t.Fatalf("WaitCount: %v", err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("send over TLS: %v", err)
	}
	if m := s.Messages()[0]; !m.TLS {
		t.Errorf("Received.TLS = false after STARTTLS")
	}

	short, cancel2 := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel2()
	if err := s.WaitCount(short, 2); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("WaitCount for a message that never comes: %v", err)
	}
}

func TestServeReturnsNilAfterClose(t *testing.T) {
	inDelay := make(chan struct{}, 1)
	s := sink.New(sink.Config{
		DataDelay: func() time.Duration {
			inDelay <- struct{}{}
			return time.Hour
		},
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()

	// A session stuck in DataDelay must not keep Close from finishing.
	sent := make(chan error, 1)
	go func() {
		c, err := smtp.Dial(ln.Addr().String())
		if err != nil {
			sent <- err
			return
		}
		defer c.Close()
		sent <- c.SendMail("a@example.com", []string{"b@example.org"}, strings.NewReader("Subject: s\r\n\r\nx\r\n"))
	}()
	select {
	case <-inDelay:
	case err := <-sent:
		t.Fatalf("send finished before DataDelay: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("DataDelay never called")
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := <-served; err != nil {
		t.Fatalf("Serve after Close = %v, want nil", err)
	}
	if err := <-sent; err == nil {
		t.Errorf("a message sent while the sink shut down was accepted")
	}
	if s.Count() != 0 {
		t.Errorf("Count = %d", s.Count())
	}
}
