package policy

import (
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"
)

const shapingExample = `# fleet-wide limits
dest.test            concurrency=2,rate=4/s
.mms.example.net     rate=120/m burst=5   # subdomains too
[relay.provider.example] rate=14/s
[10.1.1.1]           concurrency=5 msgs-per-conn=20
[2001:db8::25]       concurrency=1
reply: ^421 4\.7\.0 .*try again later    suspend=10m
`

func TestParseShaping(t *testing.T) {
	p, err := Parse(map[string][]byte{KeyShaping: []byte(shapingExample)})
	if err != nil {
		t.Fatal(err)
	}
	checkRoundTrip(t, p)
	r := p.Shaping
	if d, ok := r.Domain("mx.dest.test"); !ok || d.Key != "d.dest.test" || d.Limit.Concurrency != 2 || d.Limit.Rate != 4 {
		t.Errorf("dest.test: %+v %v", d, ok)
	}
	if d, ok := r.Domain("a.mms.example.net"); !ok || d.Limit.Rate != 2 || d.Limit.Burst != 5 {
		t.Errorf("mms.example.net: %+v %v", d, ok)
	}
	if _, ok := r.Domain("other.test"); ok {
		t.Error("other.test has a rule")
	}
	if d, ok := r.Host("[relay.provider.example]", netip.MustParseAddr("192.0.2.1")); !ok || d.Limit.Rate != 14 || d.Key != "h.relay.provider.example" {
		t.Errorf("relay host: %+v %v", d, ok)
	}
	if d, ok := r.Host("mx.any.example.", netip.MustParseAddr("10.1.1.1")); !ok || d.Limit.Concurrency != 5 || d.Limit.MsgsPerConn != 20 {
		t.Errorf("by IP: %+v %v", d, ok)
	}
	if d, ok := r.Host("[IPv6:x]", netip.MustParseAddr("2001:db8::25")); !ok || strings.Contains(d.Key, ":") {
		t.Errorf("IPv6 hop: %+v %v (a KV key holds no colon)", d, ok)
	}
	rr, ok := r.MatchReply("421 4.7.0 Our system has detected unusual traffic, try again later")
	if !ok || rr.Suspend != 10*time.Minute || rr.Line != 7 {
		t.Errorf("reply rule: %+v %v", rr, ok)
	}
	if _, ok := r.MatchReply("451 4.3.0 temporary failure"); ok {
		t.Error("an unrelated reply matched")
	}
}

// TestParseShapingErrors: every bad line is reported with its line number,
// and nothing is applied.
func TestParseShapingErrors(t *testing.T) {
	in := "ok.test concurrency=1\n" +
		"bad..domain rate=1/s\n" +
		"x.test speed=3\n" +
		"y.test\n" +
		"z.test concurrency=100000\n" +
		"ok.test rate=1/s\n" +
		"[relay.example rate=1\n" +
		"reply: 421 ( suspend=1m\n" +
		"reply: 421 suspend=forever\n" +
		"q.test rate=5/d\n" +
		"w.test rate=0\n"
	_, err := Parse(map[string][]byte{KeyShaping: []byte(in)})
	if err == nil {
		t.Fatal("bad shaping key accepted")
	}
	for _, want := range []string{
		"shaping:2: bad domain", "shaping:3: x.test: unknown limit", "shaping:4: \"y.test\" has no limits",
		"shaping:5: z.test: concurrency: 100000 is above the maximum", "shaping:6: duplicate entry ok.test",
		"shaping:7: bad next hop", "shaping:8: reply: pattern", "shaping:9: reply: suspend=forever",
		"shaping:10: q.test: rate", "shaping:11: w.test: every limit is 0",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q:\n%v", want, err)
		}
	}
}

func FuzzParseShaping(f *testing.F) {
	f.Add([]byte(shapingExample))
	f.Add([]byte("a.test rate=0.5/s\n[::1] concurrency=3\nreply: (?s).* suspend=1s\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzOne(t, KeyShaping, data, nil)
	})
}

// TestShapingDocExamples: the shaping examples of docs/shaping.md and the
// README parse.
func TestShapingDocExamples(t *testing.T) {
	for _, f := range []struct{ file, after string }{
		{"../../docs/shaping.md", "## The `shaping` policy key"},
		{"../../README.md", "# shaping (ConfigMap)"},
	} {
		if p := parseDocExample(t, f.file, f.after, KeyShaping); p.Shaping.Len() < 3 {
			t.Errorf("%s example: %d rules", f.file, p.Shaping.Len())
		}
	}
}

// parseDocExample parses, as the policy key key, the example in file that
// starts at the line after (a "# key" comment line in a code block), or in
// the first code block after it (a heading).
func parseDocExample(t *testing.T, file, after, key string) *Policy {
	t.Helper()
	raw, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	s := string(raw)
	i := strings.Index(s, after)
	if i < 0 {
		t.Fatalf("%s: no %q", file, after)
	}
	s = s[i:]
	if !strings.HasPrefix(s, "# "+key) {
		s = s[strings.Index(s, "```\n")+4:]
	}
	s = s[:strings.Index(s, "```")]
	p, err := Parse(map[string][]byte{key: []byte(s)})
	if err != nil {
		t.Fatalf("%s example: %v\n%s", file, err, s)
	}
	return p
}
