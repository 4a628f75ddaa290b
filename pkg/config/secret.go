package config

// Secret is a flag value that never shows itself: String (used by --help for
// the default, and by anything that prints the flag set) gives "[redacted]"
// when it is set. It satisfies flag.Value and pflag.Value.
type Secret string

// Set stores the value.
func (s *Secret) Set(v string) error { *s = Secret(v); return nil }

// String masks a set value.
func (s *Secret) String() string {
	if s == nil || *s == "" {
		return ""
	}
	return "[redacted]"
}

// Type names the value in pflag's help.
func (s *Secret) Type() string { return "string" }

// Reveal is the secret itself, for the one place that uses it.
func (s Secret) Reveal() string { return string(s) }

// GoString keeps %#v from printing it.
func (s Secret) GoString() string { return (&s).String() }
