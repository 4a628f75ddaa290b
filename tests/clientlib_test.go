package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mailfwd/mailfwd/pkg/daemon"
)

// Issue 19 item 3, with a real client library: Python's smtplib (as an
// application sends) on the submission port, STARTTLS and AUTH, delivered
// end to end to the destination's sink.

type smtplibTransaction struct {
	Sent    int               `json:"sent"`
	Refused map[string][2]any `json:"refused"`
}

// smtplibSend sends msg from a@app.test to rcpts through
// tests/testdata/smtplib_send.py and returns its transactions.
func (s *submissionEnv) smtplibSend(t *testing.T, rcpts []string, msg string) []smtplibTransaction {
	t.Helper()
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 not installed")
	}
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, s.ca.PEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	host, port, _ := strings.Cut(s.listen["submission"], ":")
	var portN int
	fmt.Sscan(port, &portN)
	in, _ := json.Marshal(map[string]any{
		"host": host, "port": portN, "cafile": ca, "user": subUser, "password": subPass,
		"from": "a@app.test", "to": rcpts, "message": msg,
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, py, "testdata/smtplib_send.py")
	cmd.Stdin = bytes.NewReader(in)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("smtplib: %v\n%s", err, stderr.String())
	}
	var res struct {
		Transactions []smtplibTransaction `json:"transactions"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("smtplib output %q: %v", out, err)
	}
	return res.Transactions
}

// 150 recipients against a limit of 100: smtplib's sendmail gets 452 for
// 50 of them (its refused dict), the message goes to the 100, and the rest
// go in a second transaction; all 150 receive it.
func TestSmtplibManyRecipients(t *testing.T) {
	s := newSubmissionEnv(t, false, 3, func(in *daemon.Ingress) { in.SMTP.MaxRecipients = 100 })
	var rcpts []string
	for i := range 150 {
		rcpts = append(rcpts, fmt.Sprintf("r%03d@alpha.test", i))
	}
	msg := "From: a@app.test\r\nTo: undisclosed-recipients:;\r\nSubject: 150 recipients\r\n\r\nhello\r\n"
	txs := s.smtplibSend(t, rcpts, msg)
	if len(txs) != 2 || txs[0].Sent != 150 || len(txs[0].Refused) != 50 || txs[1].Sent != 50 || len(txs[1].Refused) != 0 {
		t.Fatalf("transactions %+v: want 150 sent with 50 refused, then those 50 accepted", txs)
	}
	for r, v := range txs[0].Refused {
		if code, _ := v[0].(float64); code != 452 || !strings.HasPrefix(fmt.Sprint(v[1]), "4.5.3") {
			t.Fatalf("%s refused with %v, want 452 4.5.3", r, v)
		}
	}
	waitFor(t, "delivery to all 150", 60*time.Second, func() bool { return len(s.sink().RecipientsDelivered()) == 150 })
	for _, r := range rcpts {
		if n := s.sink().RecipientsDelivered()[r]; n != 1 {
			t.Fatalf("%s got the message %d times", r, n)
		}
	}
}

// Generated HTML as one line of 2,000 and 20,000 characters: accepted and
// delivered with the line intact (line breaks an outbound fold may add are
// disregarded when comparing).
func TestSmtplibLongLines(t *testing.T) {
	s := newSubmissionEnv(t, false, 3)
	for i, n := range []int{2000, 20000} {
		line := strings.Repeat("0123456789", n/10)
		msg := "From: a@app.test\r\nTo: u@alpha.test\r\nSubject: long line\r\nMIME-Version: 1.0\r\nContent-Type: text/html; charset=us-ascii\r\n\r\n<html><body>" + line + "</body></html>\r\n"
		txs := s.smtplibSend(t, []string{"u@alpha.test"}, msg)
		if len(txs) != 1 || len(txs[0].Refused) != 0 {
			t.Fatalf("%d-character line: transactions %+v", n, txs)
		}
		waitFor(t, "delivery", 60*time.Second, func() bool { return s.sink().Count() == i+1 })
		got := string(s.sink().Messages()[i].Data)
		for _, fold := range []string{"=\r\n", "\r\n ", "\r\n"} {
			got = strings.ReplaceAll(got, fold, "")
		}
		if !strings.Contains(got, "<html><body>"+line+"</body></html>") {
			t.Fatalf("the %d-character line did not arrive intact:\n%.300s", n, s.sink().Messages()[i].Data)
		}
	}
}
