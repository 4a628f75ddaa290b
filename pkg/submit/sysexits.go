// Package submit is mailfwd-sendmail: the `sendmail` command line that
// programs already call (mailx, cron, scripts piping into `sendmail -t`),
// submitting over SMTP to a mailfwd ingress and answering with sendmail's
// exit codes. Queue, route and version modes (-bp, -q…, -bv, -bt, -d0) run
// the matching mailfwdctl command in-process.
package submit

import (
	"errors"
	"fmt"
)

// Exit codes from sysexits.h, as sendmail returns them; scripts test $?.
const (
	ExOK          = 0
	ExUsage       = 64 // command line usage error
	ExDataErr     = 65 // data format error (a bad header address, a message too large)
	ExNoInput     = 66 // cannot open input
	ExNoUser      = 67 // addressee unknown: a recipient refused with 5xx
	ExNoHost      = 68 // host name unknown: the ingress's name does not resolve
	ExUnavailable = 69 // service unavailable: a 5xx other than a recipient's
	ExSoftware    = 70 // internal software error
	ExOSErr       = 71 // system error
	ExOSFile      = 72 // critical OS file missing
	ExCantCreat   = 73 // cannot create output file
	ExIOErr       = 74 // input/output error (reading the message)
	ExTempFail    = 75 // temporary failure: a 4xx, the ingress unreachable; try again later
	ExProtocol    = 76 // remote error in protocol (TLS required but not offered…)
	ExNoPerm      = 77 // permission denied
	ExConfig      = 78 // configuration error (sendmail.conf)
)

// Error is a failure with the exit code it maps to.
type Error struct {
	Code int
	Err  error
}

func (e *Error) Error() string { return e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

func fail(code int, format string, args ...any) *Error {
	return &Error{Code: code, Err: fmt.Errorf(format, args...)}
}

// ExitCode is the sysexits code of err (ExSoftware for an unclassified one).
func ExitCode(err error) int {
	if err == nil {
		return ExOK
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return ExSoftware
}
