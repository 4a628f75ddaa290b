package mxresolve

import "fmt"

// Enhanced status codes (RFC 3463) carried by Error.
const (
	codeBadDestination = "5.1.2"  // NXDOMAIN, invalid domain name
	codeNullMX         = "5.1.10" // RFC 7505 null MX
	codeTempDNS        = "4.4.3"  // any temporary resolution failure
)

// Error is a resolution failure. Permanent only for NXDOMAIN of the domain,
// a null MX (RFC 7505), or a domain name that is syntactically invalid;
// everything else (SERVFAIL, timeouts, REFUSED, no addresses for any MX host
// right now...) is temporary.
type Error struct {
	Domain    string
	Permanent bool
	Enhanced  string // e.g. "5.1.2" (NXDOMAIN), "5.1.10" (null MX), "4.4.3" (temporary DNS failure)
	Msg       string // human text in sendmail's style, e.g. "Host unknown (Name server: example.invalid: host not found)"
	Err       error
}

func (e *Error) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("resolve %s: %s %s: %v", e.Domain, e.Enhanced, e.Msg, e.Err)
	}
	return fmt.Sprintf("resolve %s: %s %s", e.Domain, e.Enhanced, e.Msg)
}

func (e *Error) Unwrap() error { return e.Err }

func hostUnknown(domain, name string, err error) *Error {
	return &Error{
		Domain:    domain,
		Permanent: true,
		Enhanced:  codeBadDestination,
		Msg:       fmt.Sprintf("Host unknown (Name server: %s: host not found)", name),
		Err:       err,
	}
}

func invalidDomain(domain string, err error) *Error {
	return &Error{
		Domain:    domain,
		Permanent: true,
		Enhanced:  codeBadDestination,
		Msg:       "Host unknown (invalid domain name)",
		Err:       err,
	}
}

func nullMX(domain string) *Error {
	return &Error{
		Domain:    domain,
		Permanent: true,
		Enhanced:  codeNullMX,
		Msg:       "Domain does not accept mail (null MX)",
	}
}

func lookupFailure(domain, name string, err error) *Error {
	return &Error{
		Domain:   domain,
		Enhanced: codeTempDNS,
		Msg:      fmt.Sprintf("Host name lookup failure (Name server: %s: temporary failure)", name),
		Err:      err,
	}
}

func noAddress(domain, msg string, err error) *Error {
	return &Error{
		Domain:   domain,
		Enhanced: codeTempDNS,
		Msg:      msg,
		Err:      err,
	}
}
