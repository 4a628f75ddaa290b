package smtpauth

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"

	"github.com/mailfwd/mailfwd/pkg/address"
)

// MaxUserName bounds a user name (SASL authentication identity).
const MaxUserName = 256

// User is one line of the users file:
//
//	NAME  HASH  SENDER[,SENDER…]
//
// SENDER is a domain (example.com: addresses of exactly that domain), a
// parent (.example.com: its subdomains), an address (alerts@example.com),
// "<>" (the null sender) or "*" (any sender). This is the
// ALLOWED_SENDER_DOMAINS list of the common Postfix relay images, per user.
type User struct {
	Name    string
	Hash    PasswordHash
	Senders []string // canonical form, in file order
}

// ParseUserLine parses one users-file line (without comment or line end).
// The caller (package policy) adds file and line to the error.
func ParseUserLine(text string) (User, error) {
	f := strings.Fields(text)
	if len(f) < 2 {
		return User{}, errors.New("want NAME HASH SENDER[,SENDER…]")
	}
	name := f[0]
	if err := checkName(name); err != nil {
		return User{}, err
	}
	h, err := ParseHash(f[1])
	if err != nil {
		return User{}, fmt.Errorf("user %s: password: %w", name, err)
	}
	senders, err := ParseSenders(f[2:])
	if err != nil {
		return User{}, fmt.Errorf("user %s: %w", name, err)
	}
	return User{Name: strings.ToLower(name), Hash: h, Senders: senders}, nil
}

// ParseSenders checks and canonicalizes sender patterns (each word may be
// a comma-separated list); at least one is required.
func ParseSenders(words []string) ([]string, error) {
	var senders []string
	for _, w := range words {
		for _, s := range strings.Split(w, ",") {
			s = strings.TrimSpace(s)
			if s == "" {
				continue
			}
			c, err := canonicalSender(s)
			if err != nil {
				return nil, fmt.Errorf("sender %q: %w", s, err)
			}
			senders = append(senders, c)
		}
	}
	if len(senders) == 0 {
		return nil, errors.New("no allowed senders (list domains, .parent domains, addresses, <> or *)")
	}
	return senders, nil
}

func checkName(name string) error {
	if len(name) > MaxUserName {
		return fmt.Errorf("user name longer than %d bytes", MaxUserName)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		ok := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("._@+-=", c) >= 0
		if !ok {
			return fmt.Errorf("user name %q: only letters, digits and . _ @ + - = are allowed", name)
		}
	}
	if name == "" {
		return errors.New("empty user name")
	}
	return nil
}

// CheckName reports whether name can be a user name (for mailfwdctl).
func CheckName(name string) error { return checkName(name) }

func canonicalSender(s string) (string, error) {
	switch s {
	case "*", "<>":
		return s, nil
	}
	if at := strings.LastIndexByte(s, '@'); at >= 0 {
		if at == 0 {
			return "", errors.New("write a domain without @ (example.com), or a whole address")
		}
		a, err := address.Parse(s)
		if err != nil {
			return "", err
		}
		return strings.ToLower(a.Local) + "@" + a.ASCII, nil
	}
	d, parent := strings.CutPrefix(s, ".")
	a, err := address.Domain(d)
	if err != nil {
		return "", err
	}
	if parent {
		return "." + a, nil
	}
	return a, nil
}

// MaySend reports whether u may use sender (the MAIL FROM address as sent;
// "" is the null sender) as envelope sender.
func (u *User) MaySend(sender string) bool {
	if sender == "" {
		for _, s := range u.Senders {
			if s == "<>" || s == "*" {
				return true
			}
		}
		return false
	}
	a, err := address.Parse(sender)
	if err != nil {
		return false
	}
	addr := strings.ToLower(a.Local) + "@" + a.ASCII
	for _, s := range u.Senders {
		switch {
		case s == "*":
			return true
		case s == "<>":
		case strings.Contains(s, "@"):
			if s == addr {
				return true
			}
		case strings.HasPrefix(s, "."):
			if strings.HasSuffix(a.ASCII, s) {
				return true
			}
		default:
			if a.ASCII == s {
				return true
			}
		}
	}
	return false
}

// Line formats u as a users-file line.
func (u *User) Line() string {
	return u.Name + "\t" + u.Hash.Encoded + "\t" + strings.Join(u.Senders, ",")
}

// Users is the parsed users file: immutable, safe for concurrent use.
type Users struct {
	byName map[string]*User
	order  []*User

	dummyOnce sync.Once
	dummy     PasswordHash
}

// NewUsers builds the set; a duplicate name (case-insensitive) is an error
// naming the user.
func NewUsers(list []User) (*Users, error) {
	us := &Users{byName: map[string]*User{}}
	for i := range list {
		u := list[i]
		if _, ok := us.byName[u.Name]; ok {
			return nil, fmt.Errorf("user %s listed twice", u.Name)
		}
		us.byName[u.Name] = &u
		us.order = append(us.order, &u)
	}
	return us, nil
}

// Len is the number of users; 0 means AUTH is not offered.
func (us *Users) Len() int {
	if us == nil {
		return 0
	}
	return len(us.order)
}

// Lookup returns the user named name (case-insensitive).
func (us *Users) Lookup(name string) (*User, bool) {
	if us == nil {
		return nil, false
	}
	u, ok := us.byName[strings.ToLower(name)]
	return u, ok
}

// List returns the users in file order.
func (us *Users) List() []*User {
	if us == nil {
		return nil
	}
	return append([]*User(nil), us.order...)
}

// Text formats the whole set as a users file.
func (us *Users) Text() string {
	var b strings.Builder
	for _, u := range us.List() {
		b.WriteString(u.Line())
		b.WriteByte('\n')
	}
	return b.String()
}

// dummyHash is the hash checked for an unknown user: of a random password,
// with the cost that most users of the file have (argon2id with
// DefaultArgon2 when the file is empty), made on first use.
func (us *Users) dummyHash() PasswordHash {
	us.dummyOnce.Do(func() {
		count := map[string]int{}
		var byKey = map[string]PasswordHash{}
		for _, u := range us.order {
			k := u.Hash.costKey()
			count[k]++
			byKey[k] = u.Hash
		}
		keys := make([]string, 0, len(count))
		for k := range count {
			keys = append(keys, k)
		}
		sort.Slice(keys, func(i, j int) bool {
			if count[keys[i]] != count[keys[j]] {
				return count[keys[i]] > count[keys[j]]
			}
			return keys[i] < keys[j]
		})
		if len(keys) == 0 {
			us.dummy = PasswordHash{Algorithm: Argon2id, argon: DefaultArgon2}
			us.dummy = dummyFor(us.dummy)
			return
		}
		us.dummy = dummyFor(byKey[keys[0]])
	})
	return us.dummy
}
