package policy

import (
	"net/netip"
	"strings"
	"testing"
)

// fuzzOne parses data as key (with fixed companions), and when it parses,
// checks the round trip and runs the decisions over some addresses.
func fuzzOne(t *testing.T, key string, data []byte, companions map[string]string) {
	if !fuzzSet(t, key, data, companions) && key != "aliases" {
		// One bad line refuses the whole set; try lines alone too so the
		// fuzzer reaches the success paths more often.
		for i, l := range strings.SplitN(string(data), "\n", 8) {
			if i < 7 {
				fuzzSet(t, key, []byte(l), companions)
			}
		}
	}
}

func fuzzSet(t *testing.T, key string, data []byte, companions map[string]string) bool {
	files := toBytes(companions)
	files[key] = data
	p, err := Parse(files)
	if err != nil {
		if p != nil {
			t.Fatal("policy returned with an error")
		}
		return false
	}
	checkRoundTrip(t, p)
	addrs := []string{"u@example.com", "joe+x@local.example", "+4512345678/TYPE=PLMN@mms.mnc001.mccxxx.gprs", "postmaster@local.example"}
	for _, l := range strings.Split(string(data), "\n") {
		if f, _ := fields(l); strings.Contains(f, "@") {
			k := f[strings.IndexByte(f, ':')+1:]
			if strings.HasPrefix(k, "@") || strings.HasSuffix(k, "@") {
				k = strings.Trim(k, "@") // catch-all / user@ keys
				k = "x@" + k
				if strings.HasSuffix(k, "@") {
					k += "example.com"
				}
			}
			addrs = append(addrs, k)
		} else if f != "" {
			addrs = append(addrs, "u@"+strings.TrimPrefix(f, "."), f+"@local.example")
		}
	}
	clients := []Client{{Addr: netip.MustParseAddr("10.70.80.90")}, {Addr: netip.MustParseAddr("127.0.0.1")}, {Addr: netip.MustParseAddr("2001:db8::1"), Hostname: "mail.example.com"}}
	if len(addrs) > 16 {
		addrs = addrs[:16] // keep executions cheap so the fuzzer can minimize
	}
	for _, a := range addrs {
		for _, c := range clients {
			v := p.CheckRcpt(c, a, a)
			if v.Rule == "" || (v.Reject != nil && v.Discard) {
				t.Fatalf("CheckRcpt(%q): %+v", a, v)
			}
		}
		e := p.Expand(a)
		if (e.Reject == nil) == (len(e.Addrs) == 0) {
			t.Fatalf("Expand(%q): %+v", a, e)
		}
	}
	return true
}

func FuzzParseAccess(f *testing.F) {
	f.Add([]byte(actionsAccess))
	f.Add([]byte(precedenceAccess))
	f.Add([]byte(mmsAccess))
	f.Add([]byte("Connect:IPv6:2001:db8 REJECT\n[IPv6:::1] RELAY\nFrom:a@ OK\nTo:x.example ERROR:4.7.1:\"451 later\"\n"))
	f.Add([]byte("To:a.example ERROR:\"550 5.7.1 \"\"x\"\"\"\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzOne(t, "access", data, nil)
	})
}

func FuzzParseAliases(f *testing.F) {
	f.Add([]byte(expandAliases))
	f.Add([]byte("a: b, c\n d@example.com\n\te <f@example.net>\n"))
	f.Add([]byte("x: \"a, b\"@example.com, |prog\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzOne(t, "aliases", data, map[string]string{"local-host-names": "local.example\n"})
	})
}

func FuzzParseVirtusertable(f *testing.F) {
	f.Add([]byte(expandVirtusertable))
	f.Add([]byte("@example.com %1%3@example.net\nx+*@example.com %2@example.org\n"))
	f.Add([]byte("a@example.com error:nouser 550 5.1.1 gone\nb@example.com %1@x.example.REDIRECT\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzOne(t, "virtusertable", data, map[string]string{"aliases": "postmaster: ops@example.com\n", "local-host-names": "local.example\n"})
	})
}

func FuzzParseMailertable(f *testing.F) {
	f.Add([]byte("mms.mnc002.mcc238.gprs smtp:[10.1.1.1]:[10.1.1.2]\n.example.com esmtp:[relay.example.com]:2525 # c\nexample.org error:5.1.2:No such domain\n. relay:smarthost.example.net\n"))
	f.Add([]byte("example.net smtp:[IPv6:2001:db8::1]:25\nexample.com error:4.4.1:\"try # later\"\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzOne(t, "mailertable", data, nil)
	})
}
