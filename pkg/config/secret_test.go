package config

import (
	"flag"
	"fmt"
	"strings"
	"testing"
)

func TestSecretNeverPrints(t *testing.T) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	var s Secret
	fs.Var(&s, "nats-password", "password")
	if err := Parse(fs, nil, func(k string) string {
		if k == "MAILFWD_NATS_PASSWORD" {
			return "hunter2"
		}
		return ""
	}); err != nil {
		t.Fatal(err)
	}
	if s.Reveal() != "hunter2" {
		t.Fatalf("Reveal = %q", s.Reveal())
	}
	var help strings.Builder
	fs.SetOutput(&help)
	fs.PrintDefaults()
	for _, out := range []string{help.String(), fmt.Sprint(&s), fmt.Sprintf("%v %+v %#v", &s, struct{ P *Secret }{&s}, s), fs.Lookup("nats-password").Value.String()} {
		if strings.Contains(out, "hunter2") {
			t.Errorf("secret printed: %q", out)
		}
	}
}
