package smtpauth

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"strings"

	"github.com/emersion/go-sasl"
)

// Mechanisms are the SASL mechanisms offered (after TLS only).
var Mechanisms = []string{sasl.Plain, sasl.Login}

// Error is an AUTH outcome for the ingress's one SMTP error boundary: it
// sends Reply and, when Close is set, closes the connection after it.
type Error struct {
	Reply Reply
	Close bool
	Err   error // the cause, for the log; never sent
}

func (e *Error) Error() string { return e.Reply.String() }
func (e *Error) Unwrap() error { return e.Err }

// Authenticator joins the Verifier, the FailureBudget and the log line for
// one ingress. Its Server method is what a go-smtp AuthSession's Auth
// returns.
type Authenticator struct {
	Verifier *Verifier
	Budget   *FailureBudget
	Log      *slog.Logger
}

// Attempt describes one AUTH command.
type Attempt struct {
	Client    netip.Addr
	TLS       bool   // the session runs over TLS (STARTTLS done or port 465)
	Mechanism string // as sent (case-insensitive)
	Users     *Users // the policy in force
	// Success is called with the user once the password checked out.
	Success func(*User)
}

// ReplyUnknownMechanism: a mechanism not offered.
var ReplyUnknownMechanism = Reply{504, "5.5.4", "Unrecognized authentication mechanism"}

// Server returns the SASL server for one AUTH attempt, or an *Error:
// 538 5.7.11 before TLS, 421 4.7.0 (close) when the client's failure
// budget is spent, 504 5.5.4 for another mechanism. The SASL exchange
// itself ends in an *Error too: 535 5.7.8 for wrong credentials, or
// 421 4.7.0 (close) for the failure that spends the budget, 454 4.7.0
// when the check could not run.
func (a *Authenticator) Server(ctx context.Context, at Attempt) (sasl.Server, error) {
	if !at.TLS {
		return nil, &Error{Reply: ReplyEncryptionRequired}
	}
	if a.Budget != nil && a.Budget.Exhausted(at.Client) {
		return nil, &Error{Reply: ReplyTooManyFailures, Close: true}
	}
	mech := strings.ToUpper(at.Mechanism)
	check := func(user, pass string) error { return a.check(ctx, at, mech, user, pass) }
	switch mech {
	case sasl.Plain:
		return sasl.NewPlainServer(func(identity, user, pass string) error {
			if identity != "" && identity != user {
				// Acting for another identity is not offered.
				return a.fail(at, mech, user, errors.New("authorization identity differs"))
			}
			return check(user, pass)
		}), nil
	case sasl.Login:
		return &loginServer{check: check}, nil
	}
	return nil, &Error{Reply: ReplyUnknownMechanism}
}

// errBudgetSpent: the failure budget refused a check before it ran.
var errBudgetSpent = errors.New("failure budget spent")

func (a *Authenticator) check(ctx context.Context, at Attempt, mech, user, pass string) error {
	var admit func() error
	if a.Budget != nil {
		// Asked inside the verifier's slot, right before the hash check:
		// sessions parked at "Password:" (or waiting for a slot) while the
		// budget was spent get no check.
		admit = func() error {
			if !a.Budget.Begin(at.Client, user) {
				return errBudgetSpent
			}
			return nil
		}
	}
	u, err := a.Verifier.VerifyAdmitted(ctx, at.Users, user, pass, admit)
	switch {
	case errors.Is(err, errBudgetSpent):
		if a.Log != nil {
			a.Log.Warn("SMTP AUTH refused: failure budget spent", "client", at.Client.Unmap().String(), "mechanism", mech)
		}
		return &Error{Reply: ReplyTooManyFailures, Close: true, Err: err}
	case errors.Is(err, ErrBadCredentials):
		if a.Budget == nil {
			return a.failed(at, mech, user, 1, false, err)
		}
		failures, exhausted := a.Budget.End(at.Client, user, true)
		return a.failed(at, mech, user, failures, exhausted, err)
	case err != nil:
		return &Error{Reply: ReplyTemporaryFailure, Err: err}
	}
	if a.Budget != nil {
		a.Budget.End(at.Client, user, false)
	}
	if at.Success != nil {
		at.Success(u)
	}
	return nil
}

// fail records a failure that needed no password check.
func (a *Authenticator) fail(at Attempt, mech, user string, cause error) error {
	failures, exhausted := 1, false
	if a.Budget != nil {
		failures, exhausted = a.Budget.Fail(at.Client, user)
	}
	return a.failed(at, mech, user, failures, exhausted, cause)
}

// failed logs a failure and picks its reply.
func (a *Authenticator) failed(at Attempt, mech, user string, failures int, exhausted bool, cause error) error {
	limit := 0
	if a.Budget != nil {
		limit = a.Budget.Limit()
	}
	if a.Log != nil {
		LogFailure(a.Log, at.Client, mech, user, failures, limit)
	}
	if exhausted {
		return &Error{Reply: ReplyTooManyFailures, Close: true, Err: cause}
	}
	return &Error{Reply: ReplyBadCredentials, Err: cause}
}

// maxLoginField bounds the user name and password of AUTH LOGIN.
const maxLoginField = 1024

// loginServer is the server side of the LOGIN mechanism
// (draft-murchison-sasl-login): "Username:", "Password:".
type loginServer struct {
	check func(user, pass string) error
	step  int
	user  string
	done  bool
}

func (s *loginServer) Next(response []byte) (challenge []byte, done bool, err error) {
	if s.done {
		return nil, false, errors.New("sasl login: exchange already ended")
	}
	if len(response) > maxLoginField {
		s.done = true
		return nil, false, &Error{Reply: Reply{500, "5.5.6", "Authentication exchange line is too long"}}
	}
	switch s.step {
	case 0:
		s.step = 1
		if response == nil { // no initial response
			return []byte("Username:"), false, nil
		}
		fallthrough
	case 1:
		s.user, s.step = string(response), 2
		return []byte("Password:"), false, nil
	default:
		s.done = true
		if err := s.check(s.user, string(response)); err != nil {
			return nil, false, err
		}
		return nil, true, nil
	}
}
