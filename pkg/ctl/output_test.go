package ctl_test

import (
	"strings"
	"testing"

	"github.com/mailfwd/mailfwd/pkg/ctl"
)

// TestOutputFormatChecked: every command with -o refuses an unknown format
// before it connects to anything (the NATS URL and the policy directory
// given here lead nowhere).
func TestOutputFormatChecked(t *testing.T) {
	t.Setenv("MAILFWD_POLICY_DIR", "")
	none := t.TempDir() + "/none"
	for _, args := range [][]string{
		{"queue", "list"}, {"queue", "stats"}, {"queue", "show", "x"}, {"queue", "orphans"},
		{"shaping", "status"}, {"version"}, {"doctor"}, {"quota", "status", "--policy-dir", none},
		{"policy", "get", "--policy-dir", none}, {"users", "list", "--policy-dir", none},
		{"dkim", "list", "--policy-dir", none}, {"route", "--policy-dir", none, "x@example.com"},
	} {
		r := mustCtl(t, ctl.ExitUsage, append([]string{"--nats-url", "nats://127.0.0.1:1"}, append(args, "-o", "xml")...)...)
		if !strings.Contains(r.errOut, `-o "xml": want table, json or yaml`) {
			t.Errorf("%s: %s", strings.Join(args, " "), r.errOut)
		}
	}
}
