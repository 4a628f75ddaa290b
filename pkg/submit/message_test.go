package submit

import (
	"bytes"
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"
)

func writeFile(p, s string) error { return os.WriteFile(p, []byte(s), 0o644) }

func TestReadMessage(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string
		ignore         bool
		limit          int64
		code           int
	}{
		{"dot ends", "Subject: x\n\nline\n.\nafter\n", "Subject: x\n\nline\n", false, 1000, 0},
		{"dot CRLF ends", "a\r\n.\r\nafter", "a\r\n", false, 1000, 0},
		{"dot at EOF without newline ends", "a\n.", "a\n", false, 1000, 0},
		{"-i keeps dots", "a\n.\nb\n", "a\n.\nb\n", true, 1000, 0},
		{"double dot is data", "a\n..\nb\n", "a\n..\nb\n", false, 1000, 0},
		{"EOF", "a\nb", "a\nb", false, 1000, 0},
		{"too large", strings.Repeat("x", 2000) + "\n", "", false, 1024, ExDataErr},
		{"too large -i", strings.Repeat("x", 2000), "", true, 1024, ExDataErr},
		{"exactly the limit", strings.Repeat("x", 1024), strings.Repeat("x", 1024), true, 1024, 0},
		{"long line", strings.Repeat("y", 10000) + "\n.\n", strings.Repeat("y", 10000) + "\n", false, 20000, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ReadMessage(strings.NewReader(tc.in), tc.limit, tc.ignore)
			if tc.code != 0 {
				if ExitCode(err) != tc.code {
					t.Fatalf("err = %v (exit %d), want exit %d", err, ExitCode(err), tc.code)
				}
				return
			}
			if err != nil || string(got) != tc.want {
				t.Fatalf("got %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestPrepare(t *testing.T) {
	now := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	base := PrepareOptions{Sender: "me@host.test", QualifyDomain: "host.test", Hostname: "host.test", Now: now}
	for _, tc := range []struct {
		name     string
		in       string
		opts     func(*PrepareOptions)
		rcpts    []string
		added    []string
		contains []string // byte strings the output must contain
		absent   []string
		code     int
	}{
		{name: "-t with Bcc", in: "To: a@x.test, \"B, Jr\" <b@y.test>\nCc: c@z.test\nBcc: hidden@w.test,\n  more@w.test\nSubject: s\n\nbody\n",
			opts: func(o *PrepareOptions) { o.Extract = true }, rcpts: []string{"a@x.test", "b@y.test", "c@z.test", "hidden@w.test", "more@w.test"},
			added: []string{"From", "Date", "Message-ID"}, contains: []string{"To: a@x.test, \"B, Jr\" <b@y.test>\nCc: c@z.test\nSubject: s\nFrom: <me@host.test>\nDate: Tue, 01 Dec 2026 10:00:00 +0000\nMessage-ID: <20261201100000.", "@host.test>\n\nbody\n"},
			absent: []string{"Bcc", "hidden", "more@"}},
		{name: "-t suppresses command-line addresses (sendmail)", in: "To: a@x.test, b@y.test\n\nx\n",
			opts: func(o *PrepareOptions) { o.Extract = true; o.Args = []string{"B@y.test"} }, rcpts: []string{"a@x.test"}},
		{name: "complete message untouched", in: "From: Me <me@host.test>\r\nDate: Mon, 30 Nov 2026 10:00:00 +0100\r\nMessage-ID: <1@h>\r\nTo: =?iso-8859-1?q?J=F8rgen?= <j@x.test>\r\n\r\n\xe6\xf8\xe5 8-bit\r\n",
			opts: func(o *PrepareOptions) { o.Args = []string{"j@x.test"} }, rcpts: []string{"j@x.test"}, added: nil,
			contains: []string{"From: Me <me@host.test>\r\nDate: Mon, 30 Nov 2026 10:00:00 +0100\r\nMessage-ID: <1@h>\r\nTo: =?iso-8859-1?q?J=F8rgen?= <j@x.test>\r\n\r\n\xe6\xf8\xe5 8-bit\r\n"}},
		{name: "no header at all (seed: sendmail -F … addr, then text)", in: "Your booking ZZZ is complete.\n",
			opts: func(o *PrepareOptions) {
				o.FullName = "ecommvss@cpships.com"
				o.Args = []string{"david.spink@cpships.com"}
			},
			rcpts: []string{"david.spink@cpships.com"}, added: []string{"From", "Date", "Message-ID"},
			contains: []string{"From: \"ecommvss@cpships.com\" <me@host.test>\n", ">\n\nYour booking ZZZ is complete.\n"}},
		{name: "seed: Subject typed as the first line", in: "Subject: Booking\nYour booking ZZZ is complete.\n",
			opts: func(o *PrepareOptions) { o.Args = []string{"d@x.test"} }, rcpts: []string{"d@x.test"},
			contains: []string{"Subject: Booking\nFrom: <me@host.test>\n", ">\n\nYour booking ZZZ is complete.\n"}},
		{name: "unqualified recipients (cron to root, mailx to a user)", in: "To: root, Joe <joe>\n\nx\n",
			opts: func(o *PrepareOptions) { o.Extract = true }, rcpts: []string{"root@host.test", "joe@host.test"}},
		{name: "MMS address verbatim", in: "Subject: mms\n\nx\n",
			opts: func(o *PrepareOptions) { o.Args = []string{"+4512345678/TYPE=PLMN@mms.mnc001.mcc238.gprs"} }, rcpts: []string{"+4512345678/TYPE=PLMN@mms.mnc001.mcc238.gprs"}},
		{name: "quoted local part keeps its quotes", in: "To: \"john doe\"@x.test, Joe <\"j d\">\n\nx\n",
			opts: func(o *PrepareOptions) { o.Extract = true }, rcpts: []string{`"john doe"@x.test`, `"j d"@host.test`}},
		{name: "group and comma list in one argument", in: "Subject: g\n\nx\n",
			opts: func(o *PrepareOptions) { o.Args = []string{"a@x.test, b@y.test", "a@x.test"} }, rcpts: []string{"a@x.test", "b@y.test"}},
		{name: "undisclosed recipients group", in: "To: undisclosed-recipients:;\nBcc: b@y.test\n\nx\n",
			opts: func(o *PrepareOptions) { o.Extract = true }, rcpts: []string{"b@y.test"}, contains: []string{"To: undisclosed-recipients:;\n"}},
		{name: "header only, no body", in: "To: a@x.test\nSubject: s",
			opts: func(o *PrepareOptions) { o.Extract = true }, rcpts: []string{"a@x.test"}, contains: []string{"To: a@x.test\nSubject: s\nFrom:"}},
		{name: "no recipients with -t", in: "Subject: s\n\nx\n", opts: func(o *PrepareOptions) { o.Extract = true }, code: ExUsage},
		{name: "no recipients", in: "Subject: s\n\nx\n", code: ExUsage},
		{name: "bad header address", in: "To: <a@x.test\n\nx\n", opts: func(o *PrepareOptions) { o.Extract = true }, code: ExDataErr},
		{name: "bad argument", in: "x\n", opts: func(o *PrepareOptions) { o.Args = []string{"<<@>>"} }, code: ExUsage},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := base
			if tc.opts != nil {
				tc.opts(&o)
			}
			p, err := Prepare([]byte(tc.in), o)
			if tc.code != 0 {
				var e *Error
				if !errors.As(err, &e) || e.Code != tc.code {
					t.Fatalf("err = %v, want exit %d", err, tc.code)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(p.Recipients, tc.rcpts) {
				t.Errorf("recipients = %q, want %q", p.Recipients, tc.rcpts)
			}
			if tc.added != nil && !reflect.DeepEqual(p.Added, tc.added) {
				t.Errorf("added = %q, want %q", p.Added, tc.added)
			}
			for _, c := range tc.contains {
				if !bytes.Contains(p.Data, []byte(c)) {
					t.Errorf("output lacks %q:\n%s", c, p.Data)
				}
			}
			for _, a := range tc.absent {
				if bytes.Contains(p.Data, []byte(a)) {
					t.Errorf("output has %q:\n%s", a, p.Data)
				}
			}
			// Whatever was not added or a Bcc: is the input, byte for byte.
			if len(p.Added) == 0 && !strings.Contains(tc.in, "Bcc") && string(p.Data) != tc.in {
				t.Errorf("output differs from the input:\n%q\n%q", p.Data, tc.in)
			}
		})
	}
}

func FuzzPrepare(f *testing.F) {
	f.Add([]byte("To: a@x.test\nBcc: b@y.test\n\nbody\n"))
	f.Add([]byte("Subject: x\r\n\tfolded\r\nTo: Joe <joe>, g: a@b, c@d;\r\n\r\n"))
	f.Add([]byte(" leading space\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		p, err := Prepare(in, PrepareOptions{Extract: true, Sender: "me@h.test", QualifyDomain: "h.test", Hostname: "h.test", Now: time.Unix(0, 0)})
		if err != nil {
			if ExitCode(err) == ExSoftware {
				t.Fatalf("unclassified error %v", err)
			}
			return
		}
		if len(p.Recipients) == 0 {
			t.Fatal("no recipients but no error")
		}
		// The body (after the first blank line) is never changed.
		if i := bytes.Index(in, []byte("\n\n")); i >= 0 && !bytes.HasSuffix(p.Data, in[i:]) {
			t.Fatalf("body changed:\n%q\n%q", in, p.Data)
		}
	})
}
