package ingress

import (
	"context"
	"errors"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/mailfwd/mailfwd/pkg/smtpauth"
)

// SMTP AUTH (RFC 4954): PLAIN and LOGIN, offered in EHLO only over TLS
// (STARTTLS done, or the implicit-TLS listener) and only while the policy in
// force has users. AUTH before TLS is 538 5.7.11 (go-smtp lets the command
// through: Server.AllowInsecureAuth is set, the session decides). The
// replies and the failure budget are pkg/smtpauth's; this file turns them
// into go-smtp's errors through reply, and closes the session after a
// 421 4.7.0.

var (
	_ smtp.AuthSession = (*session)(nil)

	errAuthNotEnabled = Reject(503, "5.5.1", "Error: authentication not enabled")
	// RFC 4954 §4: AUTH is not permitted during a mail transaction.
	errAuthInTransaction = Reject(503, "5.5.1", "Error: MAIL transaction in progress")
	// The authenticated user was removed, or its password changed, by a
	// policy reload: the session ends.
	errAuthRevoked = Reject(421, "4.7.0", "Error: authentication no longer valid, closing connection")
)

// authCheckTimeout bounds one AUTH exchange's wait for a password-check
// slot (--auth-max-concurrent-checks); beyond it 454 4.7.0.
const authCheckTimeout = 30 * time.Second

// users is the users file in force (nil without AUTH).
func (s *Server) users() *smtpauth.Users {
	if s.cfg.Auth == nil || s.cfg.Users == nil {
		return nil
	}
	return s.cfg.Users()
}

// AuthMechanisms implements smtp.AuthSession: what EHLO offers.
func (ss *session) AuthMechanisms() []string {
	if _, isTLS := ss.conn.TLSConnectionState(); !isTLS || ss.s.users().Len() == 0 {
		return nil
	}
	return smtpauth.Mechanisms
}

// Auth implements smtp.AuthSession.
func (ss *session) Auth(mech string) (sasl.Server, error) {
	if ss.hasFrom {
		return nil, reply(errAuthInTransaction, "")
	}
	users := ss.s.users()
	if users.Len() == 0 {
		return nil, reply(errAuthNotEnabled, "")
	}
	_, isTLS := ss.conn.TLSConnectionState()
	if ss.authCancel != nil {
		ss.authCancel()
	}
	ctx, cancel := context.WithTimeout(context.Background(), authCheckTimeout)
	ss.authCancel = cancel
	srv, err := ss.s.cfg.Auth.Server(ctx, smtpauth.Attempt{
		Client: ss.client.Addr, TLS: isTLS, Mechanism: mech, Users: users,
		Success: func(u *smtpauth.User) {
			ss.user, ss.client.User = u, u.Name
			ss.s.log.Info("SMTP AUTH succeeded", "client", ss.client.Addr.String(), "mechanism", mech, "user", u.Name)
		},
	})
	if err != nil {
		return nil, ss.authReply(err)
	}
	return &authServer{ss: ss, srv: srv}, nil
}

// authReply maps an AUTH outcome to its reply; an *smtpauth.Error with
// Close (the failure budget is spent) ends the session after the reply.
func (ss *session) authReply(err error) error {
	var ae *smtpauth.Error
	if errors.As(err, &ae) && ae.Close {
		if wire := wireOf(ss.conn.Conn()); wire != nil {
			wire.closeAfterReply()
		}
	}
	return reply(err, "")
}

// authServer passes the SASL exchange through, mapping its errors.
type authServer struct {
	ss  *session
	srv sasl.Server
}

func (a *authServer) Next(response []byte) ([]byte, bool, error) {
	challenge, done, err := a.srv.Next(response)
	if err != nil {
		return nil, false, a.ss.authReply(err)
	}
	return challenge, done, nil
}

// errSenderNotAllowed: an authenticated user's MAIL FROM outside the
// senders the users file allows.
var errSenderNotAllowed = &smtpauth.Error{Reply: smtpauth.ReplySenderNotAllowed}

// checkUser holds an authenticated session to the users in force, at MAIL,
// RCPT and DATA: a user a reload removed, or whose password it changed,
// ends the session (421 4.7.0); a user whose senders changed has the
// transaction's sender checked again (553 5.7.1).
func (ss *session) checkUser() error {
	if ss.user == nil {
		return nil
	}
	u, ok := ss.s.users().Lookup(ss.user.Name)
	if !ok || u.Hash.Encoded != ss.user.Hash.Encoded {
		ss.s.log.Info("authenticated user removed or its password changed by a policy reload; closing the session", "client", ss.client.Addr.String(), "user", ss.user.Name)
		if wire := wireOf(ss.conn.Conn()); wire != nil {
			wire.closeAfterReply()
		}
		return errAuthRevoked
	}
	ss.user = u
	if ss.hasFrom && !u.MaySend(ss.from) {
		ss.s.log.Info("sender refused: no longer allowed for the authenticated user", "queue_id", ss.qid, "client", ss.client.Addr.String(), "user", u.Name, "from", ss.from)
		return errSenderNotAllowed
	}
	return nil
}
