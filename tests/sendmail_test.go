package tests

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"errors"
	"net/mail"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailfwd/mailfwd/pkg/sink"
)

// requireTool returns the path of a real client program (bsd-mailx,
// uuencode…). Without it the test is skipped, or fails when
// MAILFWD_REQUIRE_MAILX=1 (make test installs them with apt-get).
func requireTool(t *testing.T, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	msg := name + " not found (Debian package " + pkg + "; make test installs it)"
	if os.Getenv("MAILFWD_REQUIRE_MAILX") == "1" {
		t.Fatal(msg + " [MAILFWD_REQUIRE_MAILX=1]")
	}
	t.Skip(msg)
	return ""
}

// sendmailEnv is the environment a program calling mailfwd-sendmail runs
// in: the ingress from MAILFWD_SENDMAIL_SERVER, no config file, a home of
// its own (mailx's dead.letter lands there).
func sendmailEnv(t *testing.T, e *env, home string) []string {
	conf := filepath.Join(home, "sendmail.conf")
	if err := os.WriteFile(conf, []byte("# written by the test\nqualify-domain = origin.test\nhelo = client.test\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// -bp, -q… and -bv run mailfwdctl (not linked into mailfwd-sendmail).
	return append(os.Environ(), "HOME="+home, "MAILFWD_SENDMAIL_CONFIG="+conf, "MAILFWD_SENDMAIL_SERVER="+e.smtp,
		"MAILFWD_SENDMAIL_MAILFWDCTL="+buildBinary(t, "ctl"),
		"MAILFWD_SENDMAIL_TIMEOUT=30s", "LC_ALL=C.UTF-8", "NAME=Test Runner") // NAME: the full name, not the passwd entry's
}

// mailxRC makes bsd-mailx run mailfwd-sendmail instead of /usr/sbin/sendmail
// (its "sendmail" variable; the host's /usr/sbin/sendmail is left alone).
// tee is a copy of exactly what mailx wrote to it, for the byte-for-byte check.
func mailxRC(t *testing.T, home, bin string) (rc, tee string) {
	tee = filepath.Join(home, "from-mailx")
	wrapper := filepath.Join(home, "sendmail-tee")
	script := "#!/bin/sh\ntee " + tee + " | exec " + bin + " \"$@\"\n"
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	rc = filepath.Join(home, "mailrc")
	if err := os.WriteFile(rc, []byte("set sendmail="+wrapper+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return rc, tee
}

// splitDelivered takes the ingress's Received: field off a delivered
// message and returns the rest.
func splitDelivered(t *testing.T, data []byte) []byte {
	t.Helper()
	if !bytes.HasPrefix(data, []byte("Received: from client.test ([127.0.0.1])\r\n")) {
		t.Fatalf("delivered message does not start with the ingress's Received: field:\n%q", data)
	}
	i := bytes.Index(data, []byte("\r\n")) + 2
	for i < len(data) && (data[i] == '\t' || data[i] == ' ') {
		i += bytes.Index(data[i:], []byte("\r\n")) + 2
	}
	return data[i:]
}

// wantSubmitted is what mailfwd-sendmail must send for input: the same
// bytes with CRLF line ends, Bcc: fields gone, and From:, Date: and
// Message-ID: appended to the header (their values taken from got, then
// checked for form).
func wantSubmitted(t *testing.T, input, got []byte, sender string) []byte {
	t.Helper()
	crlf := bytes.ReplaceAll(input, []byte("\n"), []byte("\r\n"))
	head, body, ok := bytes.Cut(crlf, []byte("\r\n\r\n"))
	if !ok {
		t.Fatalf("input has no header: %q", input)
	}
	var keep [][]byte
	skip := false
	for _, l := range bytes.SplitAfter(append(head, "\r\n"...), []byte("\r\n")) {
		if len(l) == 0 {
			continue
		}
		if l[0] != ' ' && l[0] != '\t' {
			skip = bytes.HasPrefix(bytes.ToLower(l), []byte("bcc:"))
		}
		if !skip {
			keep = append(keep, l)
		}
	}
	gotHead, _, _ := bytes.Cut(got, []byte("\r\n\r\n"))
	lines := bytes.Split(gotHead, []byte("\r\n"))
	if len(lines) < 3 {
		t.Fatalf("delivered header too short:\n%s", got)
	}
	added := lines[len(lines)-3:]
	if want := `From: "Test Runner" <` + sender + ">"; string(added[0]) != want {
		t.Errorf("added From: %q, want %q", added[0], want)
	}
	date, ok := bytes.CutPrefix(added[1], []byte("Date: "))
	if d, err := mail.ParseDate(string(date)); !ok || err != nil || time.Since(d) > time.Hour || time.Since(d) < -time.Minute {
		t.Errorf("added Date: %q is not a current RFC 5322 date (%v)", added[1], err)
	}
	if mid, ok := bytes.CutPrefix(added[2], []byte("Message-ID: <")); !ok || !bytes.HasSuffix(mid, []byte("@client.test>")) {
		t.Errorf("added Message-ID: %q", added[2])
	}
	want := bytes.Join(keep, nil)
	for _, a := range added {
		want = append(append(want, a...), "\r\n"...)
	}
	return append(append(want, "\r\n"...), body...)
}

// onlyMessage waits for the one message s gets after its first before
// messages.
func onlyMessage(t *testing.T, s *sink.Server, before int, rcpts ...string) sink.Received {
	t.Helper()
	waitFor(t, "delivery to "+strings.Join(rcpts, ","), 60*time.Second, func() bool { return s.Count() >= before+1 })
	ms := s.Messages()[before:]
	if len(ms) != 1 {
		t.Fatalf("destination has %d messages, want 1", len(ms))
	}
	if strings.Join(sortedCopy(ms[0].Recipients), ",") != strings.Join(sortedCopy(rcpts), ",") {
		t.Errorf("recipients %v, want %v", ms[0].Recipients, rcpts)
	}
	return ms[0]
}

// TestSendmailRealClients: bsd-mailx (mailx -s), a here-document into
// sendmail -t -i, and the seed's `uuencode file | mailx -s`, each through
// mailfwd-sendmail, a running ingress and worker, to the destinations;
// every delivered byte is checked.
func TestSendmailRealClients(t *testing.T) {
	mailx := requireTool(t, "bsd-mailx", "bsd-mailx")
	uuencode := requireTool(t, "uuencode", "sharutils")
	uudecode := requireTool(t, "uudecode", "sharutils")
	bin := buildBinary(t, "sendmail")
	e := newEnv(t, envOptions{blob: "fs"})
	alpha, beta, gamma := e.sinks["127.0.0.2"], e.sinks["127.0.0.3"], e.sinks["127.0.0.4"]

	t.Run("mailx -s", func(t *testing.T) {
		home := t.TempDir()
		rc, tee := mailxRC(t, home, bin)
		cmd := exec.Command(mailx, "-s", "Status report", "-c", "boss@beta.test", "-b", "audit@gamma.test", "ops@alpha.test")
		cmd.Env = append(sendmailEnv(t, e, home), "MAILRC="+rc)
		cmd.Stdin = strings.NewReader("All systems nominal.\n.\nGrüße — this dot line above is data for mailx (it runs sendmail -i).\n")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("mailx: %v\n%s", err, out)
		}
		input, err := os.ReadFile(tee)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(input, []byte("Bcc: audit@gamma.test")) {
			t.Fatalf("mailx did not write the Bcc: the test does not test what it says:\n%s", input)
		}
		for _, s := range []*sink.Server{alpha, beta, gamma} {
			rcpt := map[*sink.Server]string{alpha: "ops@alpha.test", beta: "boss@beta.test", gamma: "audit@gamma.test"}[s]
			m := onlyMessage(t, s, 0, rcpt)
			got := splitDelivered(t, m.Data)
			if want := wantSubmitted(t, input, got, loginSender()); !bytes.Equal(got, want) {
				t.Errorf("%s got:\n%q\nwant:\n%q", rcpt, got, want)
			}
			if bytes.Contains(got, []byte("audit@")) {
				t.Errorf("the Bcc recipient shows in the copy to %s", rcpt)
			}
		}
	})
	t.Run("here-document into sendmail -t -i", func(t *testing.T) {
		home := t.TempDir()
		doc := "From: Cron Daemon <cron@origin.test>\n" +
			"To: =?UTF-8?Q?J=C3=B8rgen?= <jorgen@alpha.test>,\n" +
			"  +4512345678/TYPE=PLMN@mms.mnc001.mcc238.gprs\n" +
			"Bcc: hidden@beta.test\n" +
			"Subject: nightly backup\n" +
			"X-Custom:   spacing   kept\n" +
			"\n" +
			".\n" +
			"..two dots\n" +
			"8-bit: æøå\n" +
			"From the start of a line\n"
		a0, b0 := alpha.Count(), beta.Count()
		script := bin + " -t -i <<'EOF'\n" + doc + "EOF\n"
		cmd := exec.Command("bash", "-c", script)
		cmd.Env = sendmailEnv(t, e, home)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("sendmail -t -i: %v\n%s", err, out)
		}
		// alpha gets two envelopes (alpha.test and the MMS domain, whose MX is mx.alpha.test).
		waitFor(t, "three deliveries", 60*time.Second, func() bool { return alpha.Count() >= a0+2 && beta.Count() >= b0+1 })
		for _, m := range append(alpha.Messages()[a0:], beta.Messages()[b0:]...) {
			got := splitDelivered(t, m.Data)
			// From: was given: only Date: and Message-ID: are added.
			head, _, _ := bytes.Cut(got, []byte("\r\n\r\n"))
			lines := bytes.Split(head, []byte("\r\n"))
			added := lines[len(lines)-2:]
			if !bytes.HasPrefix(added[0], []byte("Date: ")) || !bytes.HasPrefix(added[1], []byte("Message-ID: <")) {
				t.Fatalf("added fields %q", added)
			}
			crlf := strings.ReplaceAll(doc, "\n", "\r\n")
			crlf = strings.Replace(crlf, "Bcc: hidden@beta.test\r\n", "", 1)
			want := strings.Replace(crlf, "\r\n\r\n", "\r\n"+string(added[0])+"\r\n"+string(added[1])+"\r\n\r\n", 1)
			if string(got) != want {
				t.Errorf("to %v got:\n%q\nwant:\n%q", m.Recipients, got, want)
			}
			if m.From != loginSender() {
				t.Errorf("envelope sender %q", m.From)
			}
		}
		if alpha.Count() != a0+2 || beta.Count() != b0+1 {
			t.Errorf("deliveries alpha %d beta %d, want 2 and 1", alpha.Count()-a0, beta.Count()-b0)
		}
	})
	t.Run("uuencode file | mailx -s", func(t *testing.T) {
		home := t.TempDir()
		rc, tee := mailxRC(t, home, bin)
		file := filepath.Join(home, "file.bin")
		data := make([]byte, 20000)
		_, _ = rand.Read(data)
		if err := os.WriteFile(file, data, 0o644); err != nil {
			t.Fatal(err)
		}
		g0 := gamma.Count()
		cmd := exec.Command("bash", "-c", uuencode+" file.bin file.bin | "+mailx+" -s Documents david.spink@gamma.test")
		cmd.Dir = home
		cmd.Env = append(sendmailEnv(t, e, home), "MAILRC="+rc)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("uuencode | mailx: %v\n%s", err, out)
		}
		input, err := os.ReadFile(tee)
		if err != nil {
			t.Fatal(err)
		}
		m := onlyMessage(t, gamma, g0, "david.spink@gamma.test")
		got := splitDelivered(t, m.Data)
		if want := wantSubmitted(t, input, got, loginSender()); !bytes.Equal(got, want) {
			t.Errorf("got:\n%q\nwant:\n%q", got, want)
		}
		// And the attachment comes back out, as the recipient would decode it.
		_, body, _ := bytes.Cut(got, []byte("\r\n\r\n"))
		out := filepath.Join(home, "out")
		if err := os.Mkdir(out, 0o755); err != nil {
			t.Fatal(err)
		}
		dec := exec.Command(uudecode)
		dec.Dir = out
		dec.Stdin = bytes.NewReader(bytes.ReplaceAll(body, []byte("\r\n"), []byte("\n")))
		if b, err := dec.CombinedOutput(); err != nil {
			t.Fatalf("uudecode: %v\n%s", err, b)
		}
		back, err := os.ReadFile(filepath.Join(out, "file.bin"))
		if err != nil || !bytes.Equal(back, data) {
			t.Errorf("decoded attachment differs from the file (%v)", err)
		}
	})
}

// loginSender is the envelope sender mailfwd-sendmail uses without -f.
func loginSender() string {
	if u, err := user.Current(); err == nil {
		return u.Username + "@origin.test"
	}
	return os.Getenv("LOGNAME") + "@origin.test"
}

// TestSendmailExitCodesAndQueueModes: what scripts see from a real
// ingress. A refused recipient is exit 67 with nothing queued, mailx keeps
// the message in dead.letter; -bp lists deferred mail (mailq), -qR makes it
// due now, -bv explains a refusal, -d0 -bt prints the version.
func TestSendmailExitCodesAndQueueModes(t *testing.T) {
	mailx := requireTool(t, "bsd-mailx", "bsd-mailx")
	bin := buildBinary(t, "sendmail")
	e := newEnv(t, envOptions{blob: "fs", retryFirst: time.Hour,
		onRcpt: func(rcpt string, _ int) *smtp.SMTPError {
			if strings.HasSuffix(rcpt, "@alpha.test") {
				return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try later"}
			}
			return nil
		},
		policy: map[string]string{"access": "Connect:127.0.0.1 RELAY\nTo:blocked.test REJECT\n"}})
	home := t.TempDir()
	senv := append(sendmailEnv(t, e, home), "MAILFWD_NATS_URL="+e.nats.URL(), "MAILFWD_POLICY_DIR="+e.policyDir, "MAILFWD_SENDMAIL_DNS_SERVER="+e.dns.Addr)
	run := func(stdin string, args ...string) (int, string, string) {
		cmd := exec.Command(bin, args...)
		cmd.Env = senv
		cmd.Stdin = strings.NewReader(stdin)
		var out, errOut bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errOut
		err := cmd.Run()
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatal(err)
		}
		return cmd.ProcessState.ExitCode(), out.String(), errOut.String()
	}

	// One refused recipient: exit 67, and the other recipient gets nothing either.
	code, _, stderr := run("Subject: x\n\nbody\n", "ok@gamma.test", "nobody@blocked.test")
	if code != 67 || !strings.Contains(stderr, "nobody@blocked.test... 550") {
		t.Fatalf("exit %d, stderr %q; want 67 naming the refused recipient", code, stderr)
	}
	if out, _ := e.ctlRun("queue", "list", "-o", "json"); !strings.Contains(out, "[]") {
		t.Errorf("something was queued after a refusal:\n%s", out)
	}

	// mailx reports what sendmail could not send, with our exit code, and
	// fails in turn (bsd-mailx exits 1; its dead.letter stays empty: it has
	// already handed the text to sendmail).
	rc, _ := mailxRC(t, home, bin)
	cmd := exec.Command(mailx, "-s", "lost?", "nobody@blocked.test")
	cmd.Env = append(senv, "MAILRC="+rc)
	cmd.Stdin = strings.NewReader("keep me\n")
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "550 5.7.1") || !strings.Contains(string(out), "error code 67") {
		t.Errorf("mailx to a refused recipient: %v\n%s", err, out)
	}

	// A deferred message shows in -bp (mailq) and -qR makes it due now.
	if code, _, stderr := run("Subject: later\n\nbody\n", "-f", "sender@origin.test", "later@alpha.test"); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	waitFor(t, "a deferred envelope", 30*time.Second, func() bool {
		_, out, _ := run("", "-bp")
		return strings.Contains(out, "deferred") && strings.Contains(out, "later@alpha.test")
	})
	code, out2, stderr := run("", "-qR", "alpha.test", "-v")
	if code != 0 || !strings.Contains(out2, "made 1 due now") {
		t.Errorf("-qR alpha.test: exit %d\n%s%s", code, out2, stderr)
	}
	code, out2, _ = run("", "-q!Ralpha.test")
	if code != 0 || !strings.Contains(out2, "made 0 due now") {
		t.Errorf("-q!Ralpha.test: exit %d\n%s", code, out2)
	}
	code, _, stderr = run("", "-q15m")
	if code != 64 || !strings.Contains(stderr, "all the time") {
		t.Errorf("-q15m: exit %d %q, want 64 with a reason", code, stderr)
	}

	// -bv: what the policy does with an address.
	code, out2, stderr = run("", "-bv", "nobody@blocked.test", "ok@gamma.test")
	if code != 0 || !strings.Contains(out2, "reject") || !strings.Contains(out2, "deliver over SMTP") {
		t.Errorf("-bv: exit %d\n%s%s", code, out2, stderr)
	}
	// sendmail -d0 -bt < /dev/null | grep -i Version
	code, out2, _ = run("", "-d0", "-bt")
	if code != 0 || !strings.Contains(out2, "Version ") {
		t.Errorf("-d0 -bt: exit %d\n%s", code, out2)
	}

	// mailfwdctl version: the running ingress and worker answer on the
	// control subject; the stream and consumer are shown as configured.
	var rep struct {
		Client struct{ Component, Version string }
		Pods   []struct{ Component, Version, Host string }
		NATS   struct{ Version string }
		Stream struct {
			Name     string
			Subjects []string
		}
		Consumer struct {
			Name    string
			AckWait time.Duration `json:"ack_wait"`
		}
	}
	vout := e.mustCtl(t, "version", "-o", "json", "--wait", "500ms")
	if err := json.Unmarshal([]byte(vout), &rep); err != nil {
		t.Fatalf("version -o json: %v\n%s", err, vout)
	}
	comps := map[string]bool{}
	for _, p := range rep.Pods {
		comps[p.Component] = p.Version != "" && p.Host != ""
	}
	if rep.Client.Component != "mailfwdctl" || !comps["mailfwd-ingress"] || !comps["mailfwd-worker"] || len(rep.Pods) != 2 ||
		rep.NATS.Version == "" || rep.Stream.Name != "MAIL" || !slices.Contains(rep.Stream.Subjects, "mail.failed.>") || rep.Consumer.Name != "workers" || rep.Consumer.AckWait != 10*time.Second {
		t.Errorf("version report:\n%s", vout)
	}
	if out := e.mustCtl(t, "version"); !strings.Contains(out, "mailfwd-ingress") || !strings.Contains(out, "stream MAIL") {
		t.Errorf("version table:\n%s", out)
	}
}
