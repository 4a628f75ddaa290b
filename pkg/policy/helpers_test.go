package policy

import (
	"fmt"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/mailfwd/mailfwd/pkg/route"
)

// mustParse parses files given as strings.
func mustParse(t testing.TB, files map[string]string) *Policy {
	t.Helper()
	p, err := Parse(toBytes(files))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return p
}

func toBytes(files map[string]string) map[string][]byte {
	out := map[string][]byte{}
	for k, v := range files {
		out[k] = []byte(v)
	}
	return out
}

// policyView is everything that makes up a policy's behaviour, without
// line numbers and the version (which change when text is canonicalized).
type policyView struct {
	Rules       []accessRule
	Nets        map[netKey]accessRule
	Names       map[nameKey]accessRule
	HostNames   int
	MT          []mtEntry
	Table       *route.Table
	Aliases     []aliasEntry
	Virt        []virtEntry
	VirtDomains []string
	Local       []string
	Settings    Settings
	Senders     []string
	Quotas      string
}

func viewOf(p *Policy) policyView {
	v := policyView{
		Nets: map[netKey]accessRule{}, Names: map[nameKey]accessRule{},
		HostNames: p.access.hostNames, Table: p.Mailertable, Local: p.localOrder, Settings: p.Settings,
		Quotas: p.Quotas.String(),
	}
	for _, r := range p.access.rules {
		c := *r
		c.Line = 0
		v.Rules = append(v.Rules, c)
	}
	for k, r := range p.access.nets {
		c := *r
		c.Line = 0
		v.Nets[k] = c
	}
	for k, r := range p.access.names {
		c := *r
		c.Line = 0
		v.Names[k] = c
	}
	for _, e := range p.mailertable {
		e.Line = 0
		v.MT = append(v.MT, e)
	}
	for _, a := range p.aliasOrder {
		c := *a
		c.Line = 0
		v.Aliases = append(v.Aliases, c)
	}
	if len(p.aliases) != len(p.aliasOrder) || len(p.virt) != len(p.virtOrder) || len(p.local) != len(p.localOrder) {
		panic("index and order lists disagree")
	}
	for _, e := range p.virtOrder {
		c := *e
		c.Line = 0
		v.Virt = append(v.Virt, c)
	}
	for d := range p.virtDomains {
		v.VirtDomains = append(v.VirtDomains, d)
	}
	sort.Strings(v.VirtDomains)
	// The sender keys, without line numbers and source text.
	for _, e := range p.senders.masq.order {
		v.Senders = append(v.Senders, fmt.Sprintf("masq %s %s %t", e.Key, e.As, e.Headers))
	}
	for _, m := range []map[string]int{p.senders.except, p.senders.exposed} {
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		v.Senders = append(v.Senders, strings.Join(keys, ","))
	}
	for _, e := range p.senders.generic.order {
		v.Senders = append(v.Senders, fmt.Sprintf("generic %s %s %t", e.Key, e.RHS, e.Headers))
	}
	for _, e := range p.senders.routes.order {
		v.Senders = append(v.Senders, fmt.Sprintf("route %s %s %t", e.Key, e.RHS, e.MailertableFirst))
	}
	v.Senders = append(v.Senders, p.senders.srsSecrets...)
	return v
}

// samePolicy reports whether two policies behave the same, and a hint.
func samePolicy(a, b *Policy) (bool, string) {
	va, vb := viewOf(a), viewOf(b)
	if reflect.DeepEqual(va, vb) {
		return true, ""
	}
	ra, rb := reflect.ValueOf(va), reflect.ValueOf(vb)
	var diff []string
	for i := 0; i < ra.NumField(); i++ {
		if !reflect.DeepEqual(ra.Field(i).Interface(), rb.Field(i).Interface()) {
			diff = append(diff, ra.Type().Field(i).Name)
		}
	}
	return false, "differs in " + strings.Join(diff, ", ")
}

// checkRoundTrip asserts Parse(p.Files()) equals p.
func checkRoundTrip(t testing.TB, p *Policy) {
	t.Helper()
	files := p.Files()
	q, err := Parse(files)
	if err != nil {
		t.Fatalf("canonical text does not parse: %v\n%s", err, dump(files))
	}
	if ok, why := samePolicy(p, q); !ok {
		t.Fatalf("round trip: %s\n%s", why, dump(files))
	}
	// Canonical text is a fixed point.
	if again := q.Files(); !reflect.DeepEqual(again, files) {
		t.Fatalf("Files() not stable:\n%s\nvs\n%s", dump(files), dump(again))
	}
}

func dump(files map[string][]byte) string {
	var b strings.Builder
	for _, k := range Keys() {
		b.WriteString("== " + k + "\n" + string(files[k]))
	}
	return b.String()
}
