package ingress

import (
	"errors"

	"github.com/mailfwd/mailfwd/pkg/smtpauth"
)

// inFlightLimit names the in-flight budget that refused a message: the
// client's share (--max-in-flight-bytes-per-client) or the whole.
func inFlightLimit(err error) string {
	if errors.Is(err, errClientShare) {
		return "in_flight_bytes_per_client"
	}
	return "in_flight_bytes"
}

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
