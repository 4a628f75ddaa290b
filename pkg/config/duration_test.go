package config

import (
	"context"
	"errors"
	"flag"
	"strings"
	"testing"
	"time"
)

func TestParseDuration(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
	}{
		{"5d", 5 * Day}, {"1w", Week}, {"1w2d", 9 * Day}, {"1d12h", 36 * time.Hour},
		{"2d30m", 2*Day + 30*time.Minute}, {"120h", 120 * time.Hour}, {"90s", 90 * time.Second},
		{"1.5h", 90 * time.Minute}, {"0", 0}, {"0s", 0}, {"-5d", -5 * Day}, {" 4h ", 4 * time.Hour},
	} {
		got, err := ParseDuration(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
		// What FormatDuration writes reads back the same.
		if back, err := ParseDuration(FormatDuration(got)); err != nil || back != got {
			t.Errorf("FormatDuration(%v) = %q reads back as %v, %v", got, FormatDuration(got), back, err)
		}
	}
	for _, bad := range []string{"", "d", "5", "5x", "5d-3h", "1d+2h", "99999999999999999d", "5dd", "h5", strings.Repeat("1", 100) + "s"} {
		if d, err := ParseDuration(bad); err == nil {
			t.Errorf("ParseDuration(%q) = %v, want an error", bad, d)
		}
	}
	if got := FormatDuration(120 * time.Hour); got != "5d" {
		t.Errorf("FormatDuration(120h) = %q, want 5d", got)
	}
}

// The daemons' duration flags (their queue-lifetime flags among them) take days.
func TestDurationFlag(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	var qr time.Duration
	DurationVar(fs, &qr, "queue-return", 5*Day, "")
	if qr != 5*Day || fs.Lookup("queue-return").DefValue != "5d" {
		t.Fatalf("default %v, shown as %q", qr, fs.Lookup("queue-return").DefValue)
	}
	if err := Parse(fs, []string{"--queue-return", "1w"}, func(string) string { return "" }); err != nil || qr != Week {
		t.Fatalf("--queue-return 1w: %v, %v", qr, err)
	}
}

func FuzzParseDuration(f *testing.F) {
	for _, s := range []string{"5d", "1w2d3h", "120h", "-1d", "0", "9223372036854775807ns", "106751d"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseDuration(s)
		if err != nil {
			return
		}
		back, err := ParseDuration(FormatDuration(d))
		if err != nil || back != d {
			t.Fatalf("%q → %v → %q → %v, %v", s, d, FormatDuration(d), back, err)
		}
	})
}

func TestFQDN(t *testing.T) {
	hosts := []byte("127.0.0.1 localhost\n127.0.1.1 relay1.example.com relay1 # the host\n10.0.0.9 other.example.com other\n")
	none := func(context.Context, string) (string, error) { return "", errors.New("no DNS") }
	for _, tc := range []struct {
		host  string
		cname func(context.Context, string) (string, error)
		want  string
	}{
		{"mx.example.org", none, "mx.example.org"},
		{"relay1", none, "relay1.example.com"},
		{"RELAY1", none, "relay1.example.com"},
		{"vm", none, ""},
		{"localhost", none, ""},
		{"vm", func(context.Context, string) (string, error) { return "vm.corp.example.", nil }, "vm.corp.example"},
		{"vm", func(context.Context, string) (string, error) { return "localhost.", nil }, ""},
	} {
		if got := fqdnFrom(tc.host, hosts, tc.cname); got != tc.want {
			t.Errorf("fqdnFrom(%q) = %q, want %q", tc.host, got, tc.want)
		}
	}
}
