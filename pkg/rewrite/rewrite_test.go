package rewrite

import (
	"bytes"
	"io"
	"strings"
	"testing"
)

func masq(addr string) (string, bool) {
	if strings.HasSuffix(addr, "@server17.internal") && !strings.Contains(addr, "/TYPE=PLMN") {
		return strings.TrimSuffix(addr, "@server17.internal") + "@example.com", true
	}
	return "", false
}

func run(t *testing.T, msg string, max int) (string, Result) {
	t.Helper()
	r := Senders(strings.NewReader(msg), max, masq)
	out, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return string(out), r.Result()
}

func TestSendersRewritesOnlySenderFields(t *testing.T) {
	msg := "Received: from x by y; date\r\n" +
		"From: Cron Daemon <root@server17.internal>\r\n" +
		"To: root@server17.internal\r\n" +
		"Reply-To: a@server17.internal,\r\n b@other.example\r\n" +
		"Sender: +4512345678/TYPE=PLMN@server17.internal\r\n" +
		"Subject: From: root@server17.internal\r\n" +
		"\r\n" +
		"From: root@server17.internal in the body\r\n"
	out, res := run(t, msg, 0)
	want := "Received: from x by y; date\r\n" +
		"From: \"Cron Daemon\" <root@example.com>\r\n" +
		"To: root@server17.internal\r\n" +
		"Reply-To: <a@example.com>,\r\n <b@other.example>\r\n" +
		"Sender: +4512345678/TYPE=PLMN@server17.internal\r\n" +
		"Subject: From: root@server17.internal\r\n" +
		"\r\n" +
		"From: root@server17.internal in the body\r\n"
	if out != want {
		t.Fatalf("got\n%q\nwant\n%q", out, want)
	}
	if res.Fields != 2 || res.TooLong {
		t.Fatalf("result %+v", res)
	}
}

func TestSendersLeavesWhatItCannotParse(t *testing.T) {
	for _, msg := range []string{
		"From: not an address\n\nbody\n",
		"From: root@server17.internal\n", // no body, no empty line
		"\r\nFrom: root@server17.internal\r\n",
	} {
		out, _ := run(t, msg, 0)
		if msg == "From: root@server17.internal\n" {
			if out != "From: <root@example.com>\n" {
				t.Errorf("header-only message: %q", out)
			}
			continue
		}
		if out != msg {
			t.Errorf("%q changed to %q", msg, out)
		}
	}
}

func TestSendersBound(t *testing.T) {
	long := "X-Long: " + strings.Repeat("a", 10000) + "\r\n"
	msg := long + "From: root@server17.internal\r\n\r\nbody\r\n"
	out, res := run(t, msg, 4096)
	if out != msg || !res.TooLong {
		t.Fatalf("over the bound: changed=%t result %+v", out != msg, res)
	}
	out, res = run(t, msg, 0)
	if !strings.Contains(out, "From: <root@example.com>") || res.TooLong {
		t.Fatalf("within the default bound: %+v", res)
	}
}

func FuzzSenders(f *testing.F) {
	f.Add([]byte("From: A <root@server17.internal>\r\nReply-To: x@y.example\r\n\r\nbody"))
	f.Add([]byte("Sender:\r\n root@server17.internal\r\n\r\n"))
	f.Fuzz(func(t *testing.T, msg []byte) {
		r := Senders(bytes.NewReader(msg), 512, masq)
		out, err := io.ReadAll(r)
		if err != nil {
			t.Fatal(err)
		}
		res := r.Result()
		if res.Fields == 0 && !bytes.Equal(out, msg) {
			t.Fatalf("nothing rewritten but output differs:\n%q\n%q", msg, out)
		}
		// The body (after the first empty line) is never touched.
		if i := bytes.Index(msg, []byte("\r\n\r\n")); i >= 0 && !res.TooLong {
			if j := bytes.Index(out, []byte("\r\n\r\n")); j < 0 || !bytes.Equal(out[j:], msg[i:]) {
				t.Fatalf("body changed:\n%q\n%q", msg, out)
			}
		}
	})
}
