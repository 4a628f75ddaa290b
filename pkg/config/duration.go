package config

import (
	"flag"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Day and Week are the units sendmail users write queue lifetimes in
// (Timeout.queuereturn=5d, -O Timeout.queuewarn=4h).
const (
	Day  = 24 * time.Hour
	Week = 7 * Day
)

// maxDurationLen bounds what ParseDuration looks at (a duration is a few
// characters; a flag value or config line is not a place for megabytes).
const maxDurationLen = 64

// ParseDuration parses a duration as time.ParseDuration does, and also
// accepts the units d (24h) and w (7d), alone or mixed: "5d", "1w", "1d12h",
// "2d30m". A plain "0" is zero.
func ParseDuration(s string) (time.Duration, error) {
	in := s
	if len(s) > maxDurationLen {
		return 0, fmt.Errorf("duration %.20q…: longer than %d characters", s, maxDurationLen)
	}
	s = strings.TrimSpace(s)
	neg := false
	if s != "" && (s[0] == '-' || s[0] == '+') {
		neg = s[0] == '-'
		s = s[1:]
	}
	if s == "0" {
		return 0, nil
	}
	if s == "" {
		return 0, fmt.Errorf("invalid duration %q", in)
	}
	var total time.Duration
	// Split off leading "<n>d" / "<n>w" parts; what follows goes to time.ParseDuration.
	for s != "" {
		i := 0
		for i < len(s) && (s[i] >= '0' && s[i] <= '9') {
			i++
		}
		if i == 0 || i == len(s) || (s[i] != 'd' && s[i] != 'w') {
			break
		}
		n, err := strconv.ParseInt(s[:i], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("invalid duration %q", in)
		}
		unit := Day
		if s[i] == 'w' {
			unit = Week
		}
		if n > int64((1<<63-1)/unit) || total > (1<<63-1)-time.Duration(n)*unit {
			return 0, fmt.Errorf("invalid duration %q: too long", in)
		}
		total += time.Duration(n) * unit
		s = s[i+1:]
	}
	if s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d < 0 || (s[0] == '-' || s[0] == '+') {
			return 0, fmt.Errorf("invalid duration %q: want a number and a unit (s, m, h, d, w), e.g. 90s, 4h, 5d, 1d12h", in)
		}
		if total > (1<<63-1)-d {
			return 0, fmt.Errorf("invalid duration %q: too long", in)
		}
		total += d
	}
	if neg {
		total = -total
	}
	return total, nil
}

// FormatDuration writes d the way ParseDuration reads it back, with days
// where they are whole: 120h → 5d, 36h → 1d12h, 90s → 1m30s.
func FormatDuration(d time.Duration) string {
	if d == 0 {
		return "0s"
	}
	sign := ""
	if d < 0 {
		sign, d = "-", -d
	}
	days := d / Day
	rest := d % Day
	switch {
	case days == 0:
		return sign + rest.String()
	case rest == 0:
		return fmt.Sprintf("%s%dd", sign, days)
	}
	return fmt.Sprintf("%s%dd%s", sign, days, rest.String())
}

// Duration is a time.Duration flag value that reads ParseDuration's forms. It
// serves the standard flag package and pflag (cobra) alike.
type Duration time.Duration

// String implements flag.Value.
func (d *Duration) String() string {
	if d == nil {
		return "0s"
	}
	return FormatDuration(time.Duration(*d))
}

// Set implements flag.Value.
func (d *Duration) Set(s string) error {
	v, err := ParseDuration(s)
	if err != nil {
		return err
	}
	*d = Duration(v)
	return nil
}

// Type implements pflag.Value.
func (d *Duration) Type() string { return "duration" }

// DurationVar defines a duration flag on a standard FlagSet that accepts
// days and weeks (5d, 1w) besides Go's units.
func DurationVar(fs *flag.FlagSet, p *time.Duration, name string, value time.Duration, usage string) {
	*p = value
	fs.Var((*Duration)(p), name, usage)
}

// DurationValue is p as a flag value with value as its default, for pflag's
// Var (cobra commands): f.Var(config.DurationValue(&d, time.Hour), "min-age", "…").
func DurationValue(p *time.Duration, value time.Duration) *Duration {
	*p = value
	return (*Duration)(p)
}
