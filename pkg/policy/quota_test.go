package policy

import (
	"strings"
	"testing"
)

const quotaExample = `# outbound quotas
example.com        rate=10/s,hourly=5000     # the domain and its subdomains, one count
.bulk.example.net  hourly=20000
user:Alice         rate=2/s burst=5 hourly=500
user:*             hourly=1000
*                  rate=120/m
`

func TestParseQuota(t *testing.T) {
	p, err := Parse(map[string][]byte{KeyQuota: []byte(quotaExample)})
	if err != nil {
		t.Fatal(err)
	}
	checkRoundTrip(t, p)
	q := p.Quotas
	got := q.For("mail.example.com", "alice")
	if len(got) != 2 {
		t.Fatalf("alice from mail.example.com: %+v", got)
	}
	if u := got[0]; !u.User || u.Rule != "user:alice" || u.Key != "u.alice" || u.Limit.Rate != 2 || u.Limit.Burst != 5 || u.Limit.Hourly != 500 {
		t.Errorf("user quota: %+v", u)
	}
	if d := got[1]; d.User || d.Rule != "example.com" || d.Key != "d.example.com" || d.Limit.Hourly != 5000 {
		t.Errorf("domain quota: %+v", d)
	}
	// Defaults: each domain and each user its own count.
	got = q.For("other.test", "bob@other.test")
	if len(got) != 2 || got[0].Rule != "user:*" || got[1].Rule != "*" || got[1].Key != "d.other.test" || got[1].Limit.Rate != 2 {
		t.Fatalf("defaults: %+v", got)
	}
	if strings.ContainsAny(got[0].Key[2:], "@+:") || got[0].Key == "u." {
		t.Errorf("user key %q is not a KV key token", got[0].Key)
	}
	// The null sender and an unauthenticated client: no quota but "*" needs a domain.
	if got := q.For("", ""); len(got) != 0 {
		t.Errorf("null sender: %+v", got)
	}
	if got := q.For("[192.0.2.1]", ""); len(got) != 1 || strings.ContainsAny(got[0].Key, "[]:") {
		t.Errorf("address literal: %+v", got)
	}
	if paces := (QuotaLimit{Rate: 10, Hourly: 5000}).Paces(); paces[0].Burst != 10 || paces[1].Burst != 5000 || paces[1].Rate*3600 != 5000 {
		t.Errorf("paces: %+v", paces)
	}
	// Flag defaults apply only where the policy has no "*" / "user:*".
	flag := QuotaLimit{Hourly: 7}
	if got := NewQuotas().WithDefaults(&flag, &flag).For("x.test", "carol"); len(got) != 2 || got[1].Limit.Hourly != 7 || got[1].Rule != "*" {
		t.Errorf("flag defaults: %+v", got)
	}
	if got := q.WithDefaults(&flag, &flag).For("x.test", "carol"); got[1].Limit.Rate != 2 || got[0].Limit.Hourly != 1000 {
		t.Errorf("the policy's defaults did not win over the flags: %+v", got)
	}
}

// TestParseQuotaErrors: every bad line is reported with its line number,
// and nothing is applied.
func TestParseQuotaErrors(t *testing.T) {
	in := "ok.test hourly=10\n" +
		"bad..domain rate=1/s\n" +
		"x.test speed=3\n" +
		"y.test\n" +
		"z.test hourly=100000000\n" +
		"ok.test rate=1/s\n" +
		"user:bad/name hourly=1\n" +
		"w.test burst=5 hourly=3\n" +
		"v.test rate=5/d\n" +
		"* hourly=1\n* hourly=2\n" +
		"u.test rate=1/s,rate=2/s\n" +
		"[192.0.2.1] hourly=1\n"
	_, err := Parse(map[string][]byte{KeyQuota: []byte(in)})
	if err == nil {
		t.Fatal("bad quota key accepted")
	}
	for _, want := range []string{
		"quota:2: bad sender domain", "quota:3: x.test: unknown quota", "quota:4: \"y.test\" has no quota",
		"quota:5: z.test: hourly: 100000000 is above the maximum", "quota:6: duplicate entry ok.test",
		"quota:7: bad user", "quota:8: w.test: burst without a rate", "quota:9: v.test: rate",
		"quota:11: duplicate entry *", "quota:12: u.test: rate given twice", "quota:13: bad sender domain",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q:\n%v", want, err)
		}
	}
}

func FuzzParseQuota(f *testing.F) {
	f.Add([]byte(quotaExample))
	f.Add([]byte("a.test rate=0.5/s\nuser:x@y.test hourly=3\n* rate=1/h burst=2\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzOne(t, KeyQuota, data, nil)
		p, err := Parse(map[string][]byte{KeyQuota: data})
		if err != nil {
			return
		}
		for _, dom := range []string{"a.test", "x.example.com", "[10.0.0.1]", ""} {
			for _, q := range p.Quotas.For(dom, "U@x.test") {
				if q.Key == "" || strings.ContainsAny(q.Key, " *>[]:@+") || strings.Contains(q.Key, "..") || strings.HasSuffix(q.Key, ".") {
					t.Fatalf("quota %+v: key is not a KV key", q)
				}
				if ps := q.Limit.Paces(); len(ps) != 2 || (ps[0].Rate == 0 && ps[1].Rate == 0) {
					t.Fatalf("quota %+v limits nothing", q)
				}
			}
		}
	})
}

// TestQuotaDocExamples: the quota examples of docs/quotas.md and the
// README parse.
func TestQuotaDocExamples(t *testing.T) {
	for _, f := range []struct{ file, after string }{
		{"../../docs/quotas.md", "## The `quota` policy key"},
		{"../../README.md", "# quota (ConfigMap)"},
	} {
		if p := parseDocExample(t, f.file, f.after, KeyQuota); p.Quotas.Len() < 3 {
			t.Errorf("%s example: %d rules", f.file, p.Quotas.Len())
		}
	}
}
