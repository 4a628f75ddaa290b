package queue

import (
	"context"
	"strings"
	"testing"
)

func TestRedactURL(t *testing.T) {
	for in, want := range map[string]string{
		"nats://127.0.0.1:4222":                          "nats://127.0.0.1:4222",
		"nats://u:secret@h:4222":                         "nats://u:redacted@h:4222",
		"nats://tok3n@h:4222,nats://a:b@h2:4222":         "nats://redacted@h:4222,nats://a:redacted@h2:4222",
		"nats://nats-0:4222, nats://x:hunter2@nats-1:42": "nats://nats-0:4222,nats://x:redacted@nats-1:42",
	} {
		got := RedactURL(in)
		if strings.Contains(got, "secret") || strings.Contains(got, "tok3n") || strings.Contains(got, "hunter2") {
			t.Errorf("RedactURL(%q) = %q leaks a secret", in, got)
		}
		if strings.ReplaceAll(got, " ", "") != strings.ReplaceAll(want, " ", "") {
			t.Errorf("RedactURL(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestConnectRejectsAmbiguousCredentials(t *testing.T) {
	for _, c := range []Config{
		{URL: "nats://127.0.0.1:1", CredsFile: "/x.creds", User: "u"},
		{URL: "nats://127.0.0.1:1", Password: "s3cr3t-pw"},
		{URL: "nats://127.0.0.1:1", User: "bad user"},
		{URL: "nats://127.0.0.1:1", User: "a.b"},
		{URL: "nats://127.0.0.1:1", User: "a>"},
	} {
		if q, err := Connect(context.Background(), c); err == nil {
			q.Close()
			t.Errorf("Connect(%+v) accepted", c)
		} else if strings.Contains(err.Error(), c.Password) && c.Password != "" {
			t.Errorf("error leaks the password: %v", err)
		}
	}
}

func TestInboxPrefix(t *testing.T) {
	if got := InboxPrefix(""); got != "_INBOX" {
		t.Errorf("InboxPrefix(\"\") = %q", got)
	}
	if got := InboxPrefix("mailfwd-worker"); got != "_INBOX_mailfwd-worker" {
		t.Errorf("InboxPrefix = %q", got)
	}
}
