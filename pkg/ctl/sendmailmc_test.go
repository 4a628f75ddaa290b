package ctl

import (
	"strings"
	"testing"

	"github.com/mailfwd/mailfwd/pkg/policy"
)

func TestImportSendmailMC(t *testing.T) {
	mc := "divert(-1)dnl\ninclude(`/usr/share/sendmail-cf/m4/cf.m4')dnl\n" +
		"MASQUERADE_AS(`cpships.com')dnl\n" +
		"MASQUERADE_DOMAIN(`internal')dnl\n" +
		"FEATURE(`masquerade_entire_domain')dnl\n" +
		"FEATURE(`masquerade_envelope')dnl\n" +
		"MASQUERADE_EXCEPTION(`mail.internal')dnl\n" +
		"EXPOSED_USER(`root')dnl\n" +
		"MAILER(smtp)dnl\n"
	text, notes, err := importSendmailMC([]byte(mc), []string{"d1pr0004.cpships.com"})
	if err != nil {
		t.Fatal(err)
	}
	if len(notes) != 0 {
		t.Errorf("notes: %v", notes)
	}
	p, err := policy.Parse(map[string][]byte{"masquerade": []byte(text)})
	if err != nil {
		t.Fatalf("imported text does not parse: %v\n%s", err, text)
	}
	for in, want := range map[string]string{
		"cron@server17.internal":   "cron@cpships.com",
		"app@d1pr0004.cpships.com": "app@cpships.com",
		"app@mail.internal":        "app@mail.internal", // exception
		"root@server17.internal":   "root@server17.internal",
	} {
		if got := p.RewriteSender(in); got.Addr != want {
			t.Errorf("%s → %s, want %s\n%s", in, got.Addr, want, text)
		}
	}
	if r := p.RewriteSender("cron@server17.internal"); !r.Headers {
		t.Error("sendmail masquerades headers; the import must keep that")
	}
	_, notes, _ = importSendmailMC([]byte("MASQUERADE_AS(`example.com')\nMASQUERADE_DOMAIN(`a.example')\n"), nil)
	if len(notes) != 1 || !strings.Contains(notes[0], "masquerade_envelope") {
		t.Errorf("notes without masquerade_envelope: %v", notes)
	}
	if _, _, err := importSendmailMC([]byte("MASQUERADE_DOMAIN(`a.example')\n"), nil); err == nil {
		t.Error("MASQUERADE_DOMAIN without MASQUERADE_AS accepted")
	}
	if text, _, err := importSendmailMC([]byte("FEATURE(`access_db')\n"), nil); text != "" || err != nil {
		t.Errorf("no masquerading: %q, %v", text, err)
	}
}

func TestImportGenericstable(t *testing.T) {
	got := importGenericstable([]byte("# users\nroot@server17.internal ops@example.com\n@d1.example  %1@example.com headers\n"))
	p, err := policy.Parse(map[string][]byte{"genericstable": []byte(got)})
	if err != nil {
		t.Fatalf("%v\n%s", err, got)
	}
	if r := p.RewriteSender("root@server17.internal"); r.Addr != "ops@example.com" || !r.Headers {
		t.Errorf("%+v", r)
	}
}
