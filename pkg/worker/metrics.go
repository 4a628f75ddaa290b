package worker

import "github.com/mailfwd/mailfwd/pkg/delivery"

// outcomeTLS is the TLS description of the connection an attempt ran on,
// "" when it used none (no outcome: routing failed before a connection).
func outcomeTLS(out *delivery.Outcome) string {
	if out == nil {
		return ""
	}
	return out.TLS
}
