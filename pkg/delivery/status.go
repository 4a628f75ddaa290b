package delivery

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"

	"github.com/emersion/go-smtp"

	"github.com/mailfwd/mailfwd/pkg/dsn"
)

// RcptStatus is the outcome for one recipient.
type RcptStatus struct {
	Rcpt     string
	Code     int    // SMTP reply code; 0 when there was no reply (network error, timeout)
	Enhanced string // "2.0.0", "4.4.1", ... from the reply, else derived
	Text     string // reply text or error text
}

// Delivered reports whether the recipient was accepted (2xx).
func (s RcptStatus) Delivered() bool { return s.Code/100 == 2 }

// Permanent reports whether the failure is permanent (5xx).
func (s RcptStatus) Permanent() bool { return s.Code/100 == 5 }

// String renders the status the way it appears in a log line.
func (s RcptStatus) String() string {
	if s.Code == 0 {
		return fmt.Sprintf("%s %s", s.Enhanced, s.Text)
	}
	return fmt.Sprintf("%d %s %s", s.Code, s.Enhanced, s.Text)
}

// result is a status without the recipient, applied to one or more of them.
type result struct {
	Code     int
	Enhanced string
	Text     string
}

func (r result) forRcpt(rcpt string) RcptStatus {
	return RcptStatus{Rcpt: rcpt, Code: r.Code, Enhanced: r.Enhanced, Text: r.Text}
}

func (r result) String() string {
	return RcptStatus{Code: r.Code, Enhanced: r.Enhanced, Text: r.Text}.String()
}

// derivedEnhanced is the enhanced status implied by a bare reply code.
func derivedEnhanced(code int) string {
	switch code / 100 {
	case 2:
		return "2.0.0"
	case 5:
		return "5.0.0"
	default:
		return "4.0.0"
	}
}

// replyResult turns a server reply carried in a *smtp.SMTPError.
func replyResult(e *smtp.SMTPError) result {
	if c := e.Code / 100; c != 2 && c != 4 && c != 5 {
		// Not a reply SMTP allows here (1xx, 3xx, garbage): a protocol
		// error, temporary, and the connection is not trusted further.
		return result{Enhanced: "4.5.0", Text: fmt.Sprintf("Unexpected reply %d %s", e.Code, oneLine(e.Message))}
	}
	r := result{Code: e.Code, Text: oneLine(e.Message)}
	ec := e.EnhancedCode
	r.Enhanced = derivedEnhanced(e.Code)
	if ec != smtp.EnhancedCodeNotSet && ec != smtp.NoEnhancedCode && ec[0] == e.Code/100 {
		// go-smtp parses any digits ("5.1234.1"); RFC 3463 allows 1-3 per
		// part. An invalid status is clamped to the class's X.0.0.
		if s := fmt.Sprintf("%d.%d.%d", ec[0], ec[1], ec[2]); isEnhanced(s, byte('0'+ec[0])) {
			r.Enhanced = s
		}
	}
	return r
}

// okResult is a 250 reply whose text may start with an enhanced code (go-smtp
// returns the text of successful replies unparsed).
func okResult(text string) result {
	text = oneLine(text)
	r := result{Code: 250, Enhanced: "2.0.0", Text: text}
	if first, rest, ok := strings.Cut(text, " "); ok && isEnhanced(first, '2') {
		r.Enhanced = first
		r.Text = rest
	} else if isEnhanced(text, '2') {
		r.Enhanced = text
		r.Text = ""
	}
	return r
}

// isEnhanced reports whether s is a valid RFC 3463 status of the class.
func isEnhanced(s string, class byte) bool {
	return len(s) > 0 && s[0] == class && dsn.ValidStatus(s)
}

func oneLine(s string) string {
	s = strings.TrimSpace(s)
	if !strings.ContainsAny(s, "\r\n") {
		return s
	}
	lines := strings.FieldsFunc(s, func(r rune) bool { return r == '\r' || r == '\n' })
	return strings.Join(lines, " ")
}

// connectResult describes a failure to open a TCP connection (4.4.1).
func connectResult(ctx context.Context, name string, err error) result {
	r := result{Enhanced: "4.4.1"}
	var ne net.Error
	switch {
	case ctx.Err() != nil:
		r.Text = fmt.Sprintf("Delivery aborted while connecting to %s: %v", name, context.Cause(ctx))
	case errors.Is(err, syscall.ECONNREFUSED):
		r.Text = fmt.Sprintf("Connection refused by %s.", name)
	case errors.Is(err, syscall.EHOSTUNREACH):
		r.Text = fmt.Sprintf("No route to host %s.", name)
	case errors.Is(err, syscall.ENETUNREACH):
		r.Text = fmt.Sprintf("Network is unreachable for %s.", name)
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		r.Text = fmt.Sprintf("Connection timed out with %s.", name)
	default:
		r.Text = fmt.Sprintf("Connection to %s failed: %v", name, err)
	}
	return r
}

// lostResult describes a connection that failed after it was opened (4.4.2),
// or a delivery aborted by ctx.
func lostResult(ctx context.Context, name, during string, err error) result {
	r := result{Enhanced: "4.4.2"}
	var ne net.Error
	switch {
	case ctx.Err() != nil:
		r.Text = fmt.Sprintf("Delivery aborted during %s with %s: %v", during, name, context.Cause(ctx))
	case errors.Is(err, ErrReplyTooLarge):
		r.Text = fmt.Sprintf("Reply from %s during %s: %v; connection dropped.", name, during, err)
	case errors.As(err, &ne) && ne.Timeout():
		r.Text = fmt.Sprintf("Timeout waiting for input from %s during %s.", name, during)
	default:
		r.Text = fmt.Sprintf("Lost connection with %s during %s: %v", name, during, err)
	}
	return r
}

// stepError turns the error of one SMTP step into a result. isReply is true
// when the server answered (the connection is still in sync).
func stepError(ctx context.Context, name, during string, err error) (r result, isReply bool) {
	var serr *smtp.SMTPError
	if errors.As(err, &serr) && ctx.Err() == nil {
		r := replyResult(serr)
		return r, r.Code != 0
	}
	return lostResult(ctx, name, during, err), false
}
