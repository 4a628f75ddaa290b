package policy

import (
	"testing"

	"github.com/mailfwd/mailfwd/pkg/tlspolicy"
)

func FuzzParseTLSPolicy(f *testing.F) {
	f.Add([]byte("[email-smtp.eu-west-1.amazonaws.com]:587 secure\n.example.com encrypt # c\nexample.org verify match=hostname:.example.org ca=/etc/ca.pem\n. may\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzOne(t, KeyTLSPolicy, data, nil)
		if p, err := Parse(map[string][]byte{KeyTLSPolicy: data}); err == nil {
			again, err := Parse(map[string][]byte{KeyTLSPolicy: p.Files()[KeyTLSPolicy]})
			if err != nil {
				t.Fatalf("canonical tls_policy does not parse: %v", err)
			}
			h := tlspolicy.Hop{Domain: "a.example.org", Relay: "email-smtp.eu-west-1.amazonaws.com", Literal: true, Port: 587}
			if p.TLS.Lookup(h).Level != again.TLS.Lookup(h).Level {
				t.Fatal("round trip changed a decision")
			}
		}
	})
}

func FuzzParseAuthinfo(f *testing.F) {
	f.Add([]byte("[email-smtp.eu-west-1.amazonaws.com]:587 AKIA:pass word#1\n[smtp.office365.com]:587 xoauth2 user=u token_url=https://t.example/x client_id=i client_secret=s\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzOne(t, KeyAuthinfo, data, nil)
		if p, err := Parse(map[string][]byte{KeyAuthinfo: data}); err == nil {
			if _, err := Parse(map[string][]byte{KeyAuthinfo: p.Files()[KeyAuthinfo]}); err != nil {
				t.Fatalf("canonical authinfo does not parse: %v", err)
			}
		}
	})
}
