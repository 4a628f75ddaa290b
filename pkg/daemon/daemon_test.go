package daemon

import (
	"strings"
	"testing"

	"github.com/mailfwd/mailfwd/pkg/worker"
)

func TestParseDomainLimits(t *testing.T) {
	got, err := ParseDomainLimits([]string{"Example.COM:concurrency=5,rate=2.5/s,burst=3,msgs-per-conn=10", ".mms.gprs:rate=1"})
	if err != nil {
		t.Fatal(err)
	}
	if got["example.com"] != (worker.DomainLimit{Concurrency: 5, Rate: 2.5, Burst: 3, MsgsPerConn: 10}) {
		t.Errorf("example.com: %+v", got["example.com"])
	}
	if got["mms.gprs"] != (worker.DomainLimit{Rate: 1}) {
		t.Errorf("mms.gprs: %+v", got["mms.gprs"])
	}
	for _, bad := range []struct{ in, want string }{
		{"example.com", "want DOMAIN:"},
		{"example.com:speed=3", "unknown limit"},
		{"example.com:rate=fast", "invalid syntax"},
		{"example.com:concurrency=-1", "negative"},
		{"bad..domain:rate=1", "bad..domain"},
	} {
		if _, err := ParseDomainLimits([]string{bad.in}); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%q: err %v, want it to mention %q", bad.in, err, bad.want)
		}
	}
}
