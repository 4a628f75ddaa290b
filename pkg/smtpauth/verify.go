package smtpauth

import (
	"cmp"
	"container/list"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// Reply is an SMTP reply the ingress sends for an AUTH outcome.
type Reply struct {
	Code     int
	Enhanced string
	Text     string
}

func (r Reply) String() string { return fmt.Sprintf("%d %s %s", r.Code, r.Enhanced, r.Text) }

// The AUTH replies (RFC 4954 §6, RFC 3463).
var (
	ReplyEncryptionRequired = Reply{538, "5.7.11", "Encryption required for requested authentication mechanism"}
	ReplyBadCredentials     = Reply{535, "5.7.8", "Authentication credentials invalid"}
	ReplyTemporaryFailure   = Reply{454, "4.7.0", "Temporary authentication failure"}
	ReplyTooManyFailures    = Reply{421, "4.7.0", "Too many failed authentication attempts, closing connection"}
	ReplySenderNotAllowed   = Reply{553, "5.7.1", "Sender address not allowed for this authenticated user"}
)

// ErrBadCredentials: unknown user or wrong password (never said which).
var ErrBadCredentials = errors.New("authentication credentials invalid")

// Verifier checks passwords. Checking a hash costs CPU and, for argon2id,
// memory (64 MiB by default), so at most maxConcurrent checks run at once;
// the others wait for a slot or their context.
type Verifier struct {
	slots chan struct{}
}

// NewVerifier returns a Verifier running at most maxConcurrent checks at a
// time (the ingress's --auth-max-concurrent-checks; at least 1).
func NewVerifier(maxConcurrent int) *Verifier {
	return &Verifier{slots: make(chan struct{}, max(maxConcurrent, 1))}
}

// Verify checks name and password against users (the policy in force). An
// unknown user costs one check of a dummy hash of the same algorithm and
// cost as the file's users, so the time taken does not tell which users
// exist. It returns ErrBadCredentials or, when ctx ends while waiting for a
// slot, ctx's error (a temporary failure: ReplyTemporaryFailure).
func (v *Verifier) Verify(ctx context.Context, users *Users, name, password string) (*User, error) {
	return v.VerifyAdmitted(ctx, users, name, password, nil)
}

// VerifyAdmitted is Verify with admit asked once a slot is held, right
// before the hash is checked: an error from it is returned and nothing is
// checked (the failure budget, consulted at the last moment so that
// sessions waiting for a slot cannot check more than it allows).
func (v *Verifier) VerifyAdmitted(ctx context.Context, users *Users, name, password string, admit func() error) (*User, error) {
	select {
	case v.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-v.slots }()
	if admit != nil {
		if err := admit(); err != nil {
			return nil, err
		}
	}
	if users == nil {
		users = &Users{}
	}
	u, ok := users.Lookup(name)
	if !ok || checkName(name) != nil {
		users.dummyHash().Check(password)
		return nil, ErrBadCredentials
	}
	if !u.Hash.Check(password) {
		return nil, ErrBadCredentials
	}
	return u, nil
}

// BudgetConfig bounds failed AUTH attempts per client and per user name.
type BudgetConfig struct {
	// MaxFailures is how many failed attempts a client has within Window;
	// the next AUTH (or, for the failure that reaches it, the reply to it)
	// is ReplyTooManyFailures and the session is closed
	// (--auth-max-failures, default 5).
	MaxFailures int
	// MaxUserFailures is how many failed attempts one user name has within
	// Window, from any client (--auth-max-user-failures, default 20): it
	// bounds guessing spread over many addresses. A successful AUTH as
	// that user clears the name's count (not the client's).
	MaxUserFailures int
	// Window is how long failures count, from the first one
	// (--auth-failure-window, default 15m).
	Window time.Duration
	// MaxClients bounds the clients tracked, and apart the user names;
	// past it the least recently failing one is forgotten
	// (--auth-failure-clients, default 100000).
	MaxClients int
	// Now is the clock (tests); nil means time.Now.
	Now func() time.Time
}

// Defaults of BudgetConfig.
const (
	DefaultMaxFailures     = 5
	DefaultMaxUserFailures = 20
	DefaultFailureWindow   = 15 * time.Minute
	DefaultMaxClients      = 100000
)

// Validate checks the configuration (zero values take the defaults).
func (c *BudgetConfig) Validate() error {
	c.MaxFailures = cmp.Or(c.MaxFailures, DefaultMaxFailures)
	c.MaxUserFailures = cmp.Or(c.MaxUserFailures, DefaultMaxUserFailures)
	c.Window = cmp.Or(c.Window, DefaultFailureWindow)
	c.MaxClients = cmp.Or(c.MaxClients, DefaultMaxClients)
	switch {
	case c.MaxFailures < 1:
		return fmt.Errorf("--auth-max-failures must be at least 1, got %d", c.MaxFailures)
	case c.MaxUserFailures < 1:
		return fmt.Errorf("--auth-max-user-failures must be at least 1, got %d", c.MaxUserFailures)
	case c.Window < time.Second:
		return fmt.Errorf("--auth-failure-window must be at least 1s, got %v", c.Window)
	case c.MaxClients < 1:
		return fmt.Errorf("--auth-failure-clients must be at least 1, got %d", c.MaxClients)
	}
	return nil
}

// FailureBudget counts failed AUTH attempts per client across sessions (an
// IPv4 address, or the /64 of an IPv6 address, since one host usually owns
// a whole /64) and per user name. A password check in progress counts as
// a failure until it ends (Begin, End), so concurrent checks never exceed
// the budget. It is safe for concurrent use; memory is bounded by
// MaxClients.
type FailureBudget struct {
	cfg BudgetConfig
	mu  sync.Mutex
	m   map[string]*list.Element
	// Clients and user names are evicted apart (front: most recent
	// failure), so names sprayed by the thousand cannot push a client's
	// failures out, nor the reverse.
	clients, users *list.List
}

// lru is the eviction list key belongs to.
func (b *FailureBudget) lru(key string) *list.List {
	if strings.HasPrefix(key, "user ") {
		return b.users
	}
	return b.clients
}

type budgetEntry struct {
	key     string
	first   time.Time
	count   int // failures since first
	pending int // checks in progress (Begin without End)
}

// NewFailureBudget validates cfg and returns an empty budget.
func NewFailureBudget(cfg BudgetConfig) (*FailureBudget, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &FailureBudget{cfg: cfg, m: map[string]*list.Element{}, clients: list.New(), users: list.New()}, nil
}

// ClientKey is the unit a budget counts: the address itself for IPv4, its
// /64 for IPv6.
func ClientKey(a netip.Addr) netip.Prefix {
	a = a.Unmap()
	if a.Is4() {
		return netip.PrefixFrom(a, 32)
	}
	p, _ := a.Prefix(64)
	return p
}

func clientBudgetKey(a netip.Addr) string { return "client " + ClientKey(a).String() }

// userBudgetKey: names as the users file compares them (case-insensitive);
// a name too long to be a user is one key, whatever it says.
func userBudgetKey(name string) string {
	if len(name) > MaxUserName {
		name = name[:MaxUserName] + "…"
	}
	return "user " + strings.ToLower(name)
}

// Limit is the configured MaxFailures.
func (b *FailureBudget) Limit() int { return b.cfg.MaxFailures }

// entry returns key's entry within the window (nil: none), dropping an
// expired count. Called with b.mu held.
func (b *FailureBudget) entry(key string, now time.Time) *budgetEntry {
	el, ok := b.m[key]
	if !ok {
		return nil
	}
	e := el.Value.(*budgetEntry)
	if now.Sub(e.first) >= b.cfg.Window {
		e.first, e.count = now, 0
		if e.pending == 0 {
			b.lru(key).Remove(el)
			delete(b.m, key)
			return nil
		}
	}
	return e
}

// touch returns key's entry, creating it (evicting the least recent one
// beyond MaxClients). Called with b.mu held.
func (b *FailureBudget) touch(key string, now time.Time) *budgetEntry {
	if e := b.entry(key, now); e != nil {
		b.lru(key).MoveToFront(b.m[key])
		return e
	}
	lru := b.lru(key)
	for lru.Len() >= b.cfg.MaxClients {
		old := lru.Back()
		lru.Remove(old)
		delete(b.m, old.Value.(*budgetEntry).key)
	}
	e := &budgetEntry{key: key, first: now}
	b.m[key] = lru.PushFront(e)
	return e
}

func (b *FailureBudget) used(key string, now time.Time) int {
	if e := b.entry(key, now); e != nil {
		return e.count + e.pending
	}
	return 0
}

// Failures returns the client's failures within the window.
func (b *FailureBudget) Failures(client netip.Addr) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	if e := b.entry(clientBudgetKey(client), b.cfg.Now()); e != nil {
		return e.count
	}
	return 0
}

// Exhausted reports whether the client has no attempts left (checks in
// progress counted as failures): the ingress checks it when AUTH is issued
// and answers ReplyTooManyFailures.
func (b *FailureBudget) Exhausted(client netip.Addr) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.used(clientBudgetKey(client), b.cfg.Now()) >= b.cfg.MaxFailures
}

// Begin is asked right before a password check: false when the client's
// or the user name's budget is spent, counting the checks in progress;
// true reserves one attempt of each until End.
func (b *FailureBudget) Begin(client netip.Addr, user string) bool {
	ck, uk := clientBudgetKey(client), userBudgetKey(user)
	now := b.cfg.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.used(ck, now) >= b.cfg.MaxFailures || b.used(uk, now) >= b.cfg.MaxUserFailures {
		return false
	}
	b.touch(ck, now).pending++
	b.touch(uk, now).pending++
	return true
}

// End settles a check Begin admitted: a failure counts for the client and
// the user name (as Fail); a success clears the user name's failures only.
func (b *FailureBudget) End(client netip.Addr, user string, failed bool) (failures int, exhausted bool) {
	ck, uk := clientBudgetKey(client), userBudgetKey(user)
	now := b.cfg.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, k := range []string{ck, uk} {
		if e := b.entry(k, now); e != nil && e.pending > 0 {
			e.pending--
		}
	}
	if !failed {
		if el, ok := b.m[uk]; ok {
			if e := el.Value.(*budgetEntry); e.pending == 0 {
				b.users.Remove(el)
				delete(b.m, uk)
			} else {
				e.count = 0
			}
		}
		return b.used(ck, now), false
	}
	return b.fail(ck, uk, now)
}

// Fail records one failed attempt of the client as user (a check that
// needed no password check, such as a foreign authorization identity) and
// returns the client's failures so far and whether the client's or the
// name's budget is now spent (then the ingress answers ReplyTooManyFailures
// instead of ReplyBadCredentials and closes).
func (b *FailureBudget) Fail(client netip.Addr, user string) (failures int, exhausted bool) {
	now := b.cfg.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.fail(clientBudgetKey(client), userBudgetKey(user), now)
}

func (b *FailureBudget) fail(ck, uk string, now time.Time) (int, bool) {
	c, u := b.touch(ck, now), b.touch(uk, now)
	c.count++
	u.count++
	return c.count, c.count+c.pending >= b.cfg.MaxFailures || u.count+u.pending >= b.cfg.MaxUserFailures
}

// Tracked is the number of clients and user names with failures on record.
func (b *FailureBudget) Tracked() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.m)
}

// FailureMessage is the log message of a failed AUTH attempt. The client's
// address is part of the message itself, which log/slog writes right after
// time and level, before any attribute a client can influence, so a user
// name or HELO crafted to look like another address cannot be matched.
func FailureMessage(client netip.Addr) string {
	return "SMTP AUTH failed from [" + client.Unmap().String() + "]"
}

// Fail2banRegex is the failregex for a fail2ban filter over the ingress's
// log (slog text or JSON handler). <HOST> is fail2ban's address tag.
const (
	Fail2banRegexText = `^time=\S+ level=WARN msg="SMTP AUTH failed from \[<HOST>\]"`
	Fail2banRegexJSON = `^\{"time":"[^"]*","level":"WARN","msg":"SMTP AUTH failed from \[<HOST>\]"`
)

// maxLoggedUser bounds the user name written to the log.
const maxLoggedUser = 64

// LogFailure writes the failed-attempt line: message FailureMessage, then
// mechanism, user (truncated; the handler quotes it), failures and limit.
func LogFailure(l *slog.Logger, client netip.Addr, mechanism, user string, failures, limit int) {
	if len(user) > maxLoggedUser {
		user = user[:maxLoggedUser] + "…"
	}
	l.Warn(FailureMessage(client),
		slog.String("mechanism", mechanism),
		slog.String("user", user),
		slog.Int("failures", failures),
		slog.Int("limit", limit))
}
