package ctl

import (
	"fmt"
	"regexp"
	"strings"
)

// mcMacro matches one m4 macro call of sendmail.mc with a quoted argument:
// MASQUERADE_AS(`example.com')dnl, FEATURE(`masquerade_envelope').
var mcMacro = regexp.MustCompile("^\\s*([A-Z_]+)\\(\\s*`([^']*)'\\s*\\)")

// importSendmailMC turns the masquerading lines of a sendmail.mc into the
// masquerade key: MASQUERADE_AS, MASQUERADE_DOMAIN (with
// FEATURE(masquerade_entire_domain), every host under it),
// MASQUERADE_EXCEPTION and EXPOSED_USER. sendmail masquerades header
// senders, and the envelope too with FEATURE(masquerade_envelope); mailfwd
// always rewrites the envelope sender, so every entry gets "headers" and a
// note says what changes. local are the local-host-names, which sendmail
// masquerades as well (class w). It returns "" when the file does not
// masquerade.
func importSendmailMC(mc []byte, local []string) (masquerade string, notes []string, err error) {
	var as string
	var domains, except, exposed []string
	entire, envelope := false, false
	for i, l := range strings.Split(string(mc), "\n") {
		m := mcMacro.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		arg := strings.TrimSpace(m[2])
		switch m[1] {
		case "MASQUERADE_AS":
			if as != "" && as != arg {
				return "", nil, fmt.Errorf("sendmail.mc:%d: a second MASQUERADE_AS (%s after %s)", i+1, arg, as)
			}
			as = arg
		case "MASQUERADE_DOMAIN":
			domains = append(domains, strings.Fields(arg)...)
		case "MASQUERADE_EXCEPTION":
			except = append(except, strings.Fields(arg)...)
		case "EXPOSED_USER":
			exposed = append(exposed, strings.Fields(arg)...)
		case "FEATURE":
			switch arg {
			case "masquerade_entire_domain":
				entire = true
			case "masquerade_envelope":
				envelope = true
			case "allmasquerade", "limited_masquerade":
				notes = append(notes, fmt.Sprintf("sendmail.mc:%d: FEATURE(%s) has no mailfwd equivalent; recipient headers are never rewritten", i+1, arg))
			}
		}
	}
	if as == "" {
		if len(domains) > 0 {
			return "", nil, fmt.Errorf("sendmail.mc: MASQUERADE_DOMAIN without MASQUERADE_AS")
		}
		return "", nil, nil
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# imported from sendmail.mc: MASQUERADE_AS(`%s')\n", as)
	seen := map[string]bool{}
	add := func(key string) {
		if seen[key] || strings.EqualFold(strings.TrimPrefix(key, "."), as) {
			return
		}
		seen[key] = true
		fmt.Fprintf(&b, "%s\t%s\theaders\n", key, as)
	}
	for _, d := range local {
		add(d)
	}
	for _, d := range domains {
		if entire {
			add("." + d)
		} else {
			add(d)
		}
	}
	if len(except) > 0 {
		b.WriteString("except\t" + strings.Join(except, " ") + "\n")
	}
	if len(exposed) > 0 {
		b.WriteString("exposed\t" + strings.Join(exposed, " ") + "\n")
	}
	if !envelope {
		notes = append(notes, "sendmail.mc has no FEATURE(`masquerade_envelope'): sendmail masqueraded headers only; mailfwd rewrites the envelope sender too")
	}
	if len(seen) == 0 {
		notes = append(notes, "MASQUERADE_AS with no MASQUERADE_DOMAIN and no local-host-names: nothing to masquerade")
	}
	return b.String(), notes, nil
}

// importGenericstable gives every genericstable line the "headers" option:
// sendmail's FEATURE(genericstable) rewrites header senders as well as the
// envelope.
func importGenericstable(b []byte) string {
	var out strings.Builder
	for _, l := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		t := strings.TrimSpace(l)
		if t == "" || t[0] == '#' || strings.HasSuffix(strings.ToLower(t), " headers") || strings.HasSuffix(strings.ToLower(t), "\theaders") {
			out.WriteString(l + "\n")
			continue
		}
		out.WriteString(t + "\theaders\n")
	}
	return out.String()
}
