package daemon

import (
	"flag"
	"maps"
	"strings"
	"testing"

	"github.com/mailfwd/mailfwd/pkg/config"
	"github.com/mailfwd/mailfwd/pkg/worker"
)

func TestParseDomainLimits(t *testing.T) {
	got, err := ParseDomainLimits([]string{"Example.COM:concurrency=5,rate=2.5/s,burst=3,msgs-per-conn=10", ".mms.gprs:rate=1",
		"conns.test:new-conns=120/m,conn-burst=2", "short.test:conns=3"})
	if err != nil {
		t.Fatal(err)
	}
	if got["example.com"] != (worker.DomainLimit{Concurrency: 5, Rate: 2.5, Burst: 3, MsgsPerConn: 10}) {
		t.Errorf("example.com: %+v", got["example.com"])
	}
	if got["mms.gprs"] != (worker.DomainLimit{Rate: 1}) {
		t.Errorf("mms.gprs: %+v", got["mms.gprs"])
	}
	if got["conns.test"] != (worker.DomainLimit{NewConns: 2, ConnBurst: 2}) || got["short.test"] != (worker.DomainLimit{NewConns: 3}) {
		t.Errorf("new connections: %+v, %+v", got["conns.test"], got["short.test"])
	}
	if s := got["conns.test"].String(); s != "new-conns=2/s,conn-burst=2" {
		t.Errorf("canonical form %q", s)
	}
	for _, bad := range []struct{ in, want string }{
		{"example.com:new-conns=-2/s", "negative"},
		{"example.com:new-conns=2/d", "unit"},
		{"example.com", "want DOMAIN:"},
		{"example.com:speed=3", "unknown limit"},
		{"example.com:rate=fast", "not a number"},
		{"example.com:concurrency=-1", "negative"},
		{"bad..domain:rate=1", "bad..domain"},
	} {
		if _, err := ParseDomainLimits([]string{bad.in}); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%q: err %v, want it to mention %q", bad.in, err, bad.want)
		}
	}
}

// TestDomainLimitFlagForm: the form --help, the README and the chart show
// (concurrency and rate for one domain, commas between them) parses from
// the command line and from MAILFWD_DOMAIN_LIMIT; several domains still
// go in one value or in repeated flags.
func TestDomainLimitFlagForm(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want map[string]worker.DomainLimit
	}{
		{"flag", []string{"--domain-limit", "dest.test:concurrency=2,rate=4/s"}, nil,
			map[string]worker.DomainLimit{"dest.test": {Concurrency: 2, Rate: 4}}},
		{"repeated", []string{"--domain-limit=a.test:concurrency=2,rate=4/s,burst=2", "--domain-limit", "b.test:msgs-per-conn=5"}, nil,
			map[string]worker.DomainLimit{"a.test": {Concurrency: 2, Rate: 4, Burst: 2}, "b.test": {MsgsPerConn: 5}}},
		{"env", nil, map[string]string{"MAILFWD_DOMAIN_LIMIT": "a.test:concurrency=2,rate=4/s,b.test:rate=1/s"},
			map[string]worker.DomainLimit{"a.test": {Concurrency: 2, Rate: 4}, "b.test": {Rate: 1}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var o Worker
			fs := flag.NewFlagSet("worker", flag.ContinueOnError)
			o.Register(fs)
			if err := config.Parse(fs, tc.args, func(k string) string { return tc.env[k] }); err != nil {
				t.Fatal(err)
			}
			got, err := ParseDomainLimits(o.Limits)
			if err != nil {
				t.Fatal(err)
			}
			if !maps.Equal(got, tc.want) {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
}
