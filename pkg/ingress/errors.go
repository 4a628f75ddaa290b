package ingress

import (
	"errors"
	"fmt"

	"github.com/emersion/go-smtp"

	"github.com/mailfwd/mailfwd/pkg/address"
	"github.com/mailfwd/mailfwd/pkg/smtpauth"
)

// Error is a decision or failure with the SMTP reply it deserves. Policy
// code and the session return these; reply turns them into *smtp.SMTPError.
type Error struct {
	Code     int
	Enhanced smtp.EnhancedCode
	Msg      string
	Err      error // cause, logged, never shown to the client
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("%d %d.%d.%d %s: %v", e.Code, e.Enhanced[0], e.Enhanced[1], e.Enhanced[2], e.Msg, e.Err)
	}
	return fmt.Sprintf("%d %d.%d.%d %s", e.Code, e.Enhanced[0], e.Enhanced[1], e.Enhanced[2], e.Msg)
}

func (e *Error) Unwrap() error { return e.Err }

// Temporary reports a 4xx.
func (e *Error) Temporary() bool { return e.Code/100 == 4 }

// Reject builds an Error.
func Reject(code int, enhanced string, msg string) *Error {
	return &Error{Code: code, Enhanced: parseEnhanced(enhanced, code), Msg: msg}
}

// ErrRelayDenied is sendmail's answer for a recipient the client may not relay to.
var ErrRelayDenied = Reject(550, "5.7.1", "Relaying denied")

func parseEnhanced(s string, code int) smtp.EnhancedCode {
	var a, b, c int
	if n, _ := fmt.Sscanf(s, "%d.%d.%d", &a, &b, &c); n == 3 && a == code/100 {
		return smtp.EnhancedCode{a, b, c}
	}
	return smtp.EnhancedCode{code / 100, 0, 0}
}

// reply is the one SMTP error boundary of the ingress: it maps any error to
// the *smtp.SMTPError go-smtp needs (go-smtp checks with a plain type
// assertion, so wrapped errors would lose their code). Unknown errors become
// a generic 451 naming the queue id, never internal text.
func reply(err error, qid string) *smtp.SMTPError {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return &smtp.SMTPError{Code: e.Code, EnhancedCode: e.Enhanced, Message: e.Msg}
	}
	var auth *smtpauth.Error
	if errors.As(err, &auth) {
		return &smtp.SMTPError{Code: auth.Reply.Code, EnhancedCode: parseEnhanced(auth.Reply.Enhanced, auth.Reply.Code), Message: auth.Reply.Text}
	}
	var ae *address.Error
	if errors.As(err, &ae) {
		return &smtp.SMTPError{Code: 501, EnhancedCode: parseEnhanced(ae.Enhanced, 501), Message: "Bad address syntax: " + ae.Error()}
	}
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return se
	}
	if errors.Is(err, smtp.ErrTooLongLine) {
		// go-smtp drops the connection after this; a 4xx would only make
		// the client send the same message again.
		return &smtp.SMTPError{Code: 500, EnhancedCode: smtp.EnhancedCode{5, 5, 2}, Message: "Line too long"}
	}
	msg := "Temporary local problem, please try again later"
	if qid != "" {
		msg += " (" + qid + ")"
	}
	return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: msg}
}

// refusalAttrs are the log attributes of a refusal: the reply the client
// got and, apart, the rule that decided it (each said once).
func refusalAttrs(err error, qid string) []any {
	r := reply(err, qid)
	attrs := []any{"reply", fmt.Sprintf("%d %d.%d.%d %s", r.Code, r.EnhancedCode[0], r.EnhancedCode[1], r.EnhancedCode[2], r.Message)}
	var e *Error
	if errors.As(err, &e) && e.Err != nil {
		attrs = append(attrs, "rule", e.Err.Error())
	}
	return attrs
}
