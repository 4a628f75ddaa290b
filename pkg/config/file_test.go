package config

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func fileFlags() (*flag.FlagSet, *string, *string, *time.Duration, *StringList) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.String(ConfigFlag, "", "")
	a := fs.String("listen", ":25", "")
	b := fs.String("hostname", "default.example", "")
	var d time.Duration
	DurationVar(fs, &d, "queue-return", 5*Day, "")
	var l StringList
	fs.Var(&l, "relay-networks", "")
	return fs, a, b, &d, &l
}

// One config file per daemon: defaults → file → env → flags, flag names as
// keys, unknown keys and bad values refused with the line (issue 21).
func TestParseConfigFile(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "ingress.conf")
	write := func(s string) {
		if err := os.WriteFile(conf, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("# mailfwd-ingress\nlisten = :2525\nhostname = \"file.example\"\nqueue-return = 7d\n\nrelay-networks = 10.0.0.0/8\nrelay-networks = 192.0.2.0/24\n")

	fs, listen, host, qr, nets := fileFlags()
	if err := Parse(fs, []string{"--config", conf}, envMap(nil)); err != nil {
		t.Fatal(err)
	}
	if *listen != ":2525" || *host != "file.example" || *qr != 7*Day || strings.Join(*nets, ",") != "10.0.0.0/8,192.0.2.0/24" {
		t.Errorf("from the file: listen %q hostname %q queue-return %v relay-networks %v", *listen, *host, *qr, *nets)
	}

	// env beats the file, flags beat both.
	fs, listen, host, _, _ = fileFlags()
	env := envMap(map[string]string{"MAILFWD_HOSTNAME": "env.example", "MAILFWD_LISTEN": ":2626"})
	if err := Parse(fs, []string{"--listen=:2727", "--config=" + conf}, env); err != nil {
		t.Fatal(err)
	}
	if *listen != ":2727" || *host != "env.example" {
		t.Errorf("precedence: listen %q (want the flag's :2727), hostname %q (want env.example)", *listen, *host)
	}
	// A list from the environment replaces the file's, it is not appended to.
	fs, _, _, _, nets = fileFlags()
	if err := Parse(fs, []string{"--config", conf}, envMap(map[string]string{"MAILFWD_RELAY_NETWORKS": "198.51.100.0/24"})); err != nil {
		t.Fatal(err)
	}
	if strings.Join(*nets, ",") != "198.51.100.0/24" {
		t.Errorf("relay-networks from env over the file: %v", *nets)
	}
	// MAILFWD_CONFIG names the file too.
	fs, listen, _, _, _ = fileFlags()
	if err := Parse(fs, nil, envMap(map[string]string{"MAILFWD_CONFIG": conf})); err != nil {
		t.Fatal(err)
	}
	if *listen != ":2525" {
		t.Errorf("MAILFWD_CONFIG: listen %q, want the file's :2525", *listen)
	}

	for _, tc := range []struct{ content, want string }{
		{"listen = :25\nlisen = :26\n", "line 2: unknown setting \"lisen\""},
		{"# x\n\nqueue-return = 5 days\n", "line 3:"},
		{"listen :25\n", "line 1: want name = value"},
		{"hostname = \"unterminated\\\"\n", "line 1"},
	} {
		write(tc.content)
		fs, _, _, _, _ := fileFlags()
		err := Parse(fs, []string{"--config", conf}, envMap(nil))
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), conf) {
			t.Errorf("%q: err = %v, want one naming %s and %q", tc.content, err, conf, tc.want)
		}
	}
	fs, _, _, _, _ = fileFlags()
	if err := Parse(fs, []string{"--config", filepath.Join(dir, "missing.conf")}, envMap(nil)); err == nil {
		t.Errorf("a missing --config file was accepted")
	}
}

func FuzzParseFile(f *testing.F) {
	f.Add("listen = :25\n# c\nhostname = \"a\\tb\"\n")
	f.Add("=\n==\n\"\n")
	f.Fuzz(func(t *testing.T, s string) {
		n := 0
		_ = ParseFile(strings.NewReader(s), func(name, value string) error {
			n++
			if n > len(s) {
				t.Fatalf("more settings (%d) than bytes", n)
			}
			return nil
		})
	})
}
