package tlspolicy

import "testing"

func FuzzParseTLSPolicyLine(f *testing.F) {
	f.Add("[email-smtp.eu-west-1.amazonaws.com]:587", "secure match=nexthop:dot-nexthop ca=/etc/ca.pem")
	f.Add(".example.com", "encrypt")
	f.Add(".", "may")
	f.Fuzz(func(t *testing.T, lhs, rhs string) {
		key, err := ParseKey(lhs)
		if err == nil {
			again, err := ParseKey(key)
			if err != nil || again != key {
				t.Fatalf("key %q → %q → %q, %v", lhs, key, again, err)
			}
		}
		e, err := ParseEntry(rhs)
		if err != nil {
			return
		}
		again, err := ParseEntry(e.String())
		if err != nil || again.String() != e.String() {
			t.Fatalf("entry %q → %q → %v", rhs, e.String(), err)
		}
	})
}
