package policy

import (
	"fmt"
	"strings"

	"github.com/mailfwd/mailfwd/pkg/address"
)

// mtEntry is one mailertable line, kept for Files.
type mtEntry struct {
	Key  string // LHS, lower case, as written
	RHS  string
	Line int
}

// parseMailertable fills p.Mailertable through route.Table.Add, so the
// worker uses exactly the routes parsed here.
func (p *Policy) parseMailertable(lines []line) []error {
	var errs []error
	seen := map[string]int{}
	for _, l := range lines {
		lhs, rhs := fields(l.text)
		lhs = strings.ToLower(lhs)
		if !strings.HasPrefix(strings.ToLower(rhs), "error:") {
			rhs = stripComment(rhs)
		}
		if rhs == "" {
			errs = append(errs, l.errorf("%q has no route (e.g. smtp:[10.1.1.1] or error:5.1.2:text)", lhs))
			continue
		}
		norm := lhs
		if lhs != "." {
			d, parent := strings.CutPrefix(lhs, ".")
			a, err := address.Domain(d)
			if err != nil {
				errs = append(errs, l.errorf("bad domain %q: %v", lhs, err))
				continue
			}
			norm = a
			if parent {
				norm = "." + a
			}
		}
		if prev, ok := seen[norm]; ok {
			errs = append(errs, l.errorf("duplicate entry %s (first on line %d)", lhs, prev))
			continue
		}
		if err := p.Mailertable.Add(lhs, rhs); err != nil {
			errs = append(errs, l.errorf("%v", err))
			continue
		}
		seen[norm] = l.no
		p.mailertable = append(p.mailertable, mtEntry{Key: lhs, RHS: rhs, Line: l.no})
	}
	return errs
}

// parseLocalHostNames reads one or more domains a line (sendmail class file).
func (p *Policy) parseLocalHostNames(lines []line) []error {
	var errs []error
	for _, l := range lines {
		for _, w := range strings.Fields(stripComment(l.text)) {
			d, err := address.Domain(w)
			if err != nil {
				errs = append(errs, l.errorf("bad domain %q: %v", w, err))
				continue
			}
			if _, ok := p.local[d]; ok {
				continue
			}
			p.local[d] = l.no
			p.localOrder = append(p.localOrder, d)
		}
	}
	return errs
}

// parseSettings reads "name = value" lines.
func (p *Policy) parseSettings(lines []line) []error {
	var errs []error
	set := map[string]int{}
	for _, l := range lines {
		name, value, ok := strings.Cut(stripComment(l.text), "=")
		if !ok {
			errs = append(errs, l.errorf("expected name = value, got %q", strings.TrimSpace(l.text)))
			continue
		}
		name, value = strings.ToLower(strings.TrimSpace(name)), strings.TrimSpace(value)
		if prev, ok := set[name]; ok {
			errs = append(errs, l.errorf("%s set twice (first on line %d)", name, prev))
			continue
		}
		switch name {
		case "from_whitelist":
			switch strings.ToLower(value) {
			case "true":
				p.Settings.FromWhitelist = true
			case "false":
				p.Settings.FromWhitelist = false
			default:
				errs = append(errs, l.errorf("from_whitelist must be true or false, got %q", value))
				continue
			}
		case "srs_domain":
			d, err := address.Domain(value)
			if err != nil {
				errs = append(errs, l.errorf("srs_domain: bad domain %q: %v", value, err))
				continue
			}
			p.Settings.SRSDomain = d
		case "srs_max_age":
			d, err := parseDays(value)
			if err != nil || d <= 0 {
				errs = append(errs, l.errorf("srs_max_age: want a duration such as 21d or 72h, got %q", value))
				continue
			}
			p.Settings.SRSMaxAge = d
		default:
			errs = append(errs, l.errorf("unknown setting %q (known: from_whitelist, srs_domain, srs_max_age)", name))
			continue
		}
		set[name] = l.no
	}
	return errs
}

// text is the canonical settings file.
func (s Settings) text() string {
	t := fmt.Sprintf("from_whitelist = %t\n", s.FromWhitelist)
	if s.SRSDomain != "" {
		t += "srs_domain = " + s.SRSDomain + "\n"
	}
	if s.SRSMaxAge != 0 {
		t += "srs_max_age = " + s.SRSMaxAge.String() + "\n"
	}
	return t
}
