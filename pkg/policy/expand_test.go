package policy

import (
	"fmt"
	"reflect"
	"strings"
	"testing"
)

const expandAliases = `# aliases for the forwarder
postmaster: ops@example.com,
	oncall@example.com
root: postmaster
# a comment between entries
ops-list: "Ops Team" <ops@example.com>, second@example.net
  , third@example.net
team: root, ops-list, oncall@example.com
joe+*: joe-detail@example.net
joe: joe@example.net
loop-a: loop-b
loop-b: loop-c@local.example
loop-c: loop-a
self: self@local.example
list: "quoted user"@example.net, root
dangling: nobody-here
to-nocatch: other@nocatch.example
`

const expandVirtusertable = `# virtual domains
info@virt.example          sales@example.net
@catch.example             %1@example.net
@detail.example            %1%3@example.net
keep+*@detail.example      kept-%2@example.net
some++@detail.example      nonempty-%2@example.net
gone@virt.example          error:nouser
bad@virt.example           error:5.7.1:Not here
quoted@virt.example        error:"553 Quoted reason"
nouser2@virt.example       error:nouser 550 No such user here
moved@virt.example         new@example.net.REDIRECT
moved2@virt.example        %1-new@example.net.REDIRECT
local@virt.example         postmaster
chain@virt.example         info@virt.example
vloop@virt.example         vloop2@virt.example
vloop2@virt.example        vloop@virt.example
same@virt.example          same@virt.example
@virt.example              error:nouser
x@local.example            team
known@nocatch.example      sales@example.net
@self.example              %1@self.example
`

func expandPolicy(t *testing.T) *Policy {
	return mustParse(t, map[string]string{
		"aliases":          expandAliases,
		"virtusertable":    expandVirtusertable,
		"local-host-names": "local.example\nlocal2.example other.local.example # two more\n",
	})
}

func TestExpand(t *testing.T) {
	p := expandPolicy(t)
	tests := []struct {
		rcpt   string
		addrs  []string
		reject *Reply
		steps  []string // each a substring of the matching step, in order
	}{
		{rcpt: "someone@elsewhere.example", addrs: []string{"someone@elsewhere.example"}},
		{rcpt: "+4512345678/TYPE=PLMN@mms.mnc001.mcc238.gprs", addrs: []string{"+4512345678/TYPE=PLMN@mms.mnc001.mcc238.gprs"}},
		{rcpt: "postmaster@local.example", addrs: []string{"ops@example.com", "oncall@example.com"},
			steps: []string{"aliases:2: postmaster -> ops@example.com, oncall@example.com"}},
		{rcpt: "PostMaster@LOCAL.example", addrs: []string{"ops@example.com", "oncall@example.com"}},
		{rcpt: "root@local2.example", addrs: []string{"ops@example.com", "oncall@example.com"},
			steps: []string{"aliases:4: root -> postmaster", "aliases:2: postmaster"}},
		{rcpt: "ops-list@other.local.example", addrs: []string{"ops@example.com", "second@example.net", "third@example.net"},
			steps: []string{`aliases:6: ops-list -> "Ops Team" <ops@example.com>, second@example.net, third@example.net`}},
		{rcpt: "team@local.example", addrs: []string{"ops@example.com", "oncall@example.com", "second@example.net", "third@example.net"}},
		{rcpt: "joe+news@local.example", addrs: []string{"joe-detail@example.net"}, steps: []string{"aliases:9: joe+* -> joe-detail@example.net"}},
		{rcpt: "joe@local.example", addrs: []string{"joe@example.net"}},
		{rcpt: "list@local.example", addrs: []string{`"quoted user"@example.net`, "ops@example.com", "oncall@example.com"}},
		{rcpt: "nobody@local.example", reject: &Reply{550, "5.1.1", "<nobody@local.example>... User unknown"}},
		{rcpt: "dangling@local.example", reject: &Reply{550, "5.1.1", "<nobody-here>... User unknown"},
			steps: []string{"aliases:16: dangling -> nobody-here", "nobody-here: local recipient without alias"}},
		{rcpt: "loop-a@local.example", reject: &Reply{554, "5.4.6", "<loop-a@local.example>... Alias loop"},
			steps: []string{"loop-a -> loop-b", "loop-b -> loop-c@local.example", "loop-c -> loop-a", "loop: "}},
		{rcpt: "self@local.example", reject: &Reply{554, "5.4.6", "<self@local.example>... Alias loop"}},

		{rcpt: "info@virt.example", addrs: []string{"sales@example.net"}, steps: []string{"virtusertable:2: info@virt.example -> sales@example.net"}},
		{rcpt: "INFO@Virt.Example", addrs: []string{"sales@example.net"}},
		{rcpt: "Jane@catch.example", addrs: []string{"Jane@example.net"}, steps: []string{"virtusertable:3: @catch.example -> %1@example.net"}},
		{rcpt: "jane+tag@catch.example", addrs: []string{"jane@example.net"}},
		{rcpt: "jane+tag@detail.example", addrs: []string{"jane+tag@example.net"}},
		{rcpt: "jane@detail.example", addrs: []string{"jane@example.net"}},
		{rcpt: "keep+abc@detail.example", addrs: []string{"kept-abc@example.net"}, steps: []string{"virtusertable:5: keep+*@detail.example"}},
		{rcpt: "keep+@detail.example", addrs: []string{"kept-@example.net"}},
		{rcpt: "keep@detail.example", addrs: []string{"keep@example.net"}, steps: []string{"virtusertable:4: @detail.example"}},
		{rcpt: "some+x@detail.example", addrs: []string{"nonempty-x@example.net"}},
		{rcpt: "some+@detail.example", addrs: []string{"some+@example.net"}, steps: []string{"virtusertable:4:"}},
		{rcpt: "gone@virt.example", reject: &Reply{550, "5.1.1", "<gone@virt.example>... User unknown"}, steps: []string{"virtusertable:7: gone@virt.example -> error:nouser"}},
		{rcpt: "bad@virt.example", reject: &Reply{550, "5.7.1", "<bad@virt.example>... Not here"}},
		{rcpt: "quoted@virt.example", reject: &Reply{553, "5.0.0", "<quoted@virt.example>... Quoted reason"}},
		{rcpt: "nouser2@virt.example", reject: &Reply{550, "5.1.1", "<nouser2@virt.example>... No such user here"}},
		{rcpt: "other@virt.example", reject: &Reply{550, "5.1.1", "<other@virt.example>... User unknown"}, steps: []string{"@virt.example -> error:nouser"}},
		{rcpt: "moved@virt.example", reject: &Reply{551, "5.1.6", "User not local; please try <new@example.net>"}},
		{rcpt: "moved2@virt.example", reject: &Reply{551, "5.1.6", "User not local; please try <moved2-new@example.net>"}},
		{rcpt: "local@virt.example", addrs: []string{"ops@example.com", "oncall@example.com"},
			steps: []string{"virtusertable:13: local@virt.example -> postmaster", "aliases:2: postmaster"}},
		{rcpt: "chain@virt.example", addrs: []string{"sales@example.net"}, steps: []string{"virtusertable:14:", "virtusertable:2:"}},
		{rcpt: "vloop@virt.example", reject: &Reply{554, "5.4.6", "<vloop@virt.example>... Alias loop"}},
		{rcpt: "same@virt.example", addrs: []string{"same@virt.example"}},
		// A virtual domain without a catch-all knows only its entries (sendmail: User unknown).
		{rcpt: "known@nocatch.example", addrs: []string{"sales@example.net"}},
		{rcpt: "stranger@nocatch.example", reject: &Reply{550, "5.1.1", "<stranger@nocatch.example>... User unknown"},
			steps: []string{"virtusertable: no entry for stranger@nocatch.example"}},
		{rcpt: "anyone@self.example", addrs: []string{"anyone@self.example"}},
		// ... but an address the policy expands to is routed as written.
		{rcpt: "to-nocatch@local.example", addrs: []string{"other@nocatch.example"}},
		{rcpt: "x@local.example", addrs: []string{"ops@example.com", "oncall@example.com", "second@example.net", "third@example.net"},
			steps: []string{"virtusertable:19: x@local.example -> team", "aliases:8: team"}},
	}
	for _, tc := range tests {
		t.Run(tc.rcpt, func(t *testing.T) {
			e := p.Expand(tc.rcpt)
			if !reflect.DeepEqual(e.Reject, tc.reject) {
				t.Fatalf("Reject = %+v, want %+v (steps %q)", e.Reject, tc.reject, e.Steps)
			}
			if tc.reject == nil && !reflect.DeepEqual(e.Addrs, tc.addrs) {
				t.Fatalf("Addrs = %q, want %q (steps %q)", e.Addrs, tc.addrs, e.Steps)
			}
			if tc.reject != nil && e.Addrs != nil {
				t.Fatalf("rejected expansion has Addrs %q", e.Addrs)
			}
			i := 0
			for _, s := range e.Steps {
				if i < len(tc.steps) && strings.Contains(s, tc.steps[i]) {
					i++
				}
			}
			if i < len(tc.steps) {
				t.Fatalf("steps %q do not contain %q in order", e.Steps, tc.steps)
			}
		})
	}
}

func TestExpandDepthLimit(t *testing.T) {
	var b strings.Builder
	for i := range 30 {
		fmt.Fprintf(&b, "a%d: a%d\n", i, i+1)
	}
	b.WriteString("a30: end@example.net\n")
	p := mustParse(t, map[string]string{"aliases": b.String(), "local-host-names": "local.example\n"})
	if e := p.Expand("a15@local.example"); e.Reject != nil || !reflect.DeepEqual(e.Addrs, []string{"end@example.net"}) {
		t.Fatalf("15 levels: %+v", e)
	}
	e := p.Expand("a0@local.example")
	if e.Reject == nil || e.Reject.Code != 554 || e.Reject.Enhanced != "5.4.6" || !strings.Contains(e.Reject.Text, "too deep") {
		t.Fatalf("31 levels: %+v", e)
	}
}

// A diamond of aliases must not blow up: every name is expanded once.
func TestExpandDiamondIsLinear(t *testing.T) {
	var b strings.Builder
	for i := range 19 {
		fmt.Fprintf(&b, "d%d: d%d, d%d@local.example\n", i, i+1, i+1)
	}
	b.WriteString("d19: leaf@example.net\n")
	p := mustParse(t, map[string]string{"aliases": b.String(), "local-host-names": "local.example\n"})
	e := p.Expand("d0@local.example")
	if e.Reject != nil || !reflect.DeepEqual(e.Addrs, []string{"leaf@example.net"}) {
		t.Fatalf("diamond: %+v", e.Reject)
	}
	if len(e.Steps) > 100 {
		t.Fatalf("diamond expanded %d steps", len(e.Steps))
	}
}

// An expansion stops at the recipient limit (issue 10 defect 6).
func TestExpandMax(t *testing.T) {
	p := expandPolicy(t)
	if e := p.ExpandMax("team@local.example", 4); e.Reject != nil || len(e.Addrs) != 4 {
		t.Fatalf("at the limit: %+v", e)
	}
	e := p.ExpandMax("team@local.example", 3)
	want := &Reply{452, "4.5.3", "<team@local.example>... Too many recipients: the expansion has more than 3"}
	if !reflect.DeepEqual(e.Reject, want) || e.Addrs != nil {
		t.Fatalf("over the limit: %+v, want %+v", e, want)
	}
}
