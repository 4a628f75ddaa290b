package queue

import (
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/nats-io/nats.go"
)

// InboxPrefix is the reply-subject prefix of a connection that authenticates
// as user: its requests (JetStream API calls, pull fetches, KV watches) get
// their replies on InboxPrefix(user)+".>", which the server can allow to that
// user alone. Without a user it is NATS's shared "_INBOX".
func InboxPrefix(user string) string {
	if user == "" {
		return nats.InboxPrefix[:len(nats.InboxPrefix)-1]
	}
	return "_INBOX_" + user
}

// AuthOptions are the connect options for the configured credentials, for
// the process's other NATS connections (the control responder, mailfwdctl
// version), so they log in as the queue connection does.
func (c Config) AuthOptions() ([]nats.Option, error) { return c.authOptions() }

// authOptions turns the configured credentials into connect options.
func (c Config) authOptions() ([]nats.Option, error) {
	var opts []nats.Option
	switch {
	case c.CredsFile != "" && c.User != "":
		return nil, errors.New("queue: set either a NATS credentials file or a NATS user, not both")
	case c.Password != "" && c.User == "":
		return nil, errors.New("queue: a NATS password needs a NATS user")
	case c.CredsFile != "":
		opts = append(opts, nats.UserCredentials(c.CredsFile))
	case c.User != "":
		if err := validUser(c.User); err != nil {
			return nil, err
		}
		opts = append(opts, nats.UserInfo(c.User, c.Password), nats.CustomInboxPrefix(InboxPrefix(c.User)))
	}
	return opts, nil
}

// validUser accepts user names that are one subject token, so that the
// inbox prefix built from it is a plain subject.
func validUser(u string) error {
	if len(u) > 64 {
		return fmt.Errorf("queue: NATS user %.20q… is longer than 64 bytes", u)
	}
	for _, r := range u {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return fmt.Errorf("queue: NATS user %q: only letters, digits, '-' and '_' are allowed", u)
		}
	}
	return nil
}

// RedactURL masks passwords and tokens embedded in NATS URLs
// (nats://user:pass@host, nats://token@host) so that they can be logged.
func RedactURL(urls string) string {
	parts := strings.Split(urls, ",")
	for i, p := range parts {
		u, err := url.Parse(strings.TrimSpace(p))
		if err != nil || u.User == nil {
			continue
		}
		if _, has := u.User.Password(); has {
			u.User = url.UserPassword(u.User.Username(), "redacted")
		} else {
			u.User = url.User("redacted")
		}
		parts[i] = u.String()
	}
	return strings.Join(parts, ",")
}
