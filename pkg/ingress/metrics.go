package ingress

import (
	"errors"

	"github.com/mailfwd/mailfwd/pkg/smtpauth"
)

// authFailureReason names a failed AUTH for mailfwd_ingress_auth_failures_total.
func authFailureReason(err error) string {
	var ae *smtpauth.Error
	if !errors.As(err, &ae) {
		return "other"
	}
	switch ae.Reply {
	case smtpauth.ReplyBadCredentials:
		return "bad_credentials"
	case smtpauth.ReplyTooManyFailures:
		return "budget_spent"
	case smtpauth.ReplyTemporaryFailure:
		return "temporary"
	}
	return "other"
}
