package policy

// KeyShaping holds the fleet-wide destination limits and reply rules
// (docs/shaping.md; parsed by shaping.Rules.Add).
const KeyShaping = "shaping"

// parseShaping reads "DESTINATION LIMITS" and "reply: PATTERN suspend=D"
// lines into p.Shaping.
func (p *Policy) parseShaping(lines []line) []error {
	var errs []error
	for _, l := range lines {
		lhs, rhs := fields(stripComment(l.text))
		if err := p.Shaping.Add(lhs, rhs, l.no); err != nil {
			errs = append(errs, l.errorf("%v", err))
		}
	}
	return errs
}
