package submit

import (
	"reflect"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		name string
		prog string
		args []string
		want func(*Invocation) bool
		err  string
	}{
		{"mailx", "sendmail", []string{"-i", "-t"}, func(i *Invocation) bool { return i.Mode == ModeDeliver && i.Extract && i.IgnoreDots }, ""},
		{"grouped flags", "sendmail", []string{"-ti", "a@x.test"}, func(i *Invocation) bool { return i.Extract && i.IgnoreDots && i.Recipients[0] == "a@x.test" }, ""},
		{"cron", "/usr/sbin/sendmail", []string{"-FCronDaemon", "-i", "-B8BITMIME", "-oem", "root"}, func(i *Invocation) bool {
			return i.FullName == "CronDaemon" && i.Body == "8BITMIME" && i.Recipients[0] == "root" && len(i.Notes) == 1
		}, ""},
		{"seed -F", "/usr/lib/sendmail", []string{"-F", "ecommvss@cpships.com", "david.spink@cpships.com"}, func(i *Invocation) bool {
			return i.FullName == "ecommvss@cpships.com" && !i.IgnoreDots && i.Recipients[0] == "david.spink@cpships.com"
		}, ""},
		{"-f attached and <>", "sendmail", []string{"-f<>", "a@x.test"}, func(i *Invocation) bool { return i.FromSet && i.From == "" }, ""},
		{"-f separate", "sendmail", []string{"-f", "me@x.test", "-v", "a@x.test"}, func(i *Invocation) bool { return i.From == "me@x.test" && i.Verbose }, ""},
		{"-r", "sendmail", []string{"-rme@x.test", "a@x.test"}, func(i *Invocation) bool { return i.From == "me@x.test" }, ""},
		{"-oi", "sendmail", []string{"-oi", "a@x.test"}, func(i *Invocation) bool { return i.IgnoreDots }, ""},
		{"-O IgnoreDots", "sendmail", []string{"-O", "IgnoreDots=true", "a@x.test"}, func(i *Invocation) bool { return i.IgnoreDots }, ""},
		{"mailq", "/usr/bin/mailq", nil, func(i *Invocation) bool { return i.Mode == ModeQueueList }, ""},
		{"newaliases", "newaliases", nil, func(i *Invocation) bool { return i.Mode == ModeAliases }, ""},
		{"-bp", "sendmail", []string{"-bp"}, func(i *Invocation) bool { return i.Mode == ModeQueueList }, ""},
		{"-q", "sendmail", []string{"-q"}, func(i *Invocation) bool { return i.Mode == ModeQueueRun && len(i.QueueFilters) == 0 }, ""},
		{"seed -qR space -v", "sendmail", []string{"-qR", "cwinters.com", "-v"}, func(i *Invocation) bool {
			return reflect.DeepEqual(i.QueueFilters, []string{"--recipient=cwinters.com"}) && i.Verbose
		}, ""},
		{"-q!R attached", "sendmail", []string{"-q!Rseattle"}, func(i *Invocation) bool {
			return reflect.DeepEqual(i.QueueFilters, []string{"--not-recipient=seattle"})
		}, ""},
		{"-qS -qI", "sendmail", []string{"-qSme", "-qIabc"}, func(i *Invocation) bool {
			return reflect.DeepEqual(i.QueueFilters, []string{"--sender=me", "--id=abc"})
		}, ""},
		{"-bv", "sendmail", []string{"-bv", "a@x.test"}, func(i *Invocation) bool { return i.Mode == ModeVerify && i.Recipients[0] == "a@x.test" }, ""},
		{"-d0 -bt", "sendmail", []string{"-d0", "-bt"}, func(i *Invocation) bool { return i.Mode == ModeTest && i.Debug }, ""},
		{"-d0 alone", "sendmail", []string{"-d0"}, func(i *Invocation) bool { return i.Mode == ModeVersion }, ""},
		{"-C", "sendmail", []string{"-C", "/etc/x.conf", "a@x.test"}, func(i *Invocation) bool { return i.ConfigFile == "/etc/x.conf" }, ""},
		{"long setting", "sendmail", []string{"--server=127.0.0.1:2525", "--timeout", "1m", "a@x.test"}, func(i *Invocation) bool {
			return reflect.DeepEqual(i.Settings, [][2]string{{"server", "127.0.0.1:2525"}, {"timeout", "1m"}})
		}, ""},
		{"dsn", "sendmail", []string{"-N", "success,failure", "-Rhdrs", "-V", "env1", "a@x.test"}, func(i *Invocation) bool {
			return i.DSNNotify == "success,failure" && i.DSNReturn == "hdrs" && i.EnvID == "env1"
		}, ""},
		{"end of options", "sendmail", []string{"--", "-odd@x.test"}, func(i *Invocation) bool { return i.Recipients[0] == "-odd@x.test" }, ""},
		{"-oQ refused", "sendmail", []string{"-oQ/var/spool/omqueue", "-q"}, nil, "queue hold"},
		{"-O queuereturn refused", "sendmail", []string{"-O", "Timeout.queuereturn=10d", "-q"}, nil, "--extend"},
		{"periodic -q refused", "sendmail", []string{"-q15m"}, nil, "run the queue all the time"},
		{"-bd refused", "sendmail", []string{"-bd"}, nil, "mailfwd-ingress"},
		{"-bs refused", "sendmail", []string{"-bs"}, nil, "SMTP on stdin"},
		{"-X refused", "sendmail", []string{"-X", "/tmp/traffic", "-bd"}, nil, "mailfwdctl trace"},
		{"unknown", "sendmail", []string{"-Z"}, nil, "unknown option -Z"},
		{"missing value", "sendmail", []string{"-f"}, nil, "needs a value"},
		{"bad -B", "sendmail", []string{"-B", "9BIT"}, nil, "7BIT or 8BITMIME"},
		{"conflicting modes", "sendmail", []string{"-bp", "-bv"}, nil, "conflicting"},
		{"unknown -o", "sendmail", []string{"-oX"}, nil, "no meaning"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			inv, err := Parse(tc.prog, tc.args)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !tc.want(inv) {
				t.Errorf("unexpected invocation %+v", inv)
			}
		})
	}
}

func TestConfigFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, text string) string {
		p := dir + "/" + name
		if err := writeFile(p, text); err != nil {
			t.Fatal(err)
		}
		return p
	}
	c := DefaultConfig()
	if err := c.LoadFile(write("ok.conf", "# comment\nserver = relay.example.com:2525\n\ntls = verify\nmax-message-size = 5000\n")); err != nil {
		t.Fatal(err)
	}
	if c.Server != "relay.example.com:2525" || c.TLS != "verify" || c.MaxMessageSize != 5000 {
		t.Errorf("config = %+v", c)
	}
	if err := c.LoadEnv(func(k string) string {
		return map[string]string{"MAILFWD_SENDMAIL_SERVER": "10.0.0.1:25", "MAILFWD_NATS_URL": "nats://n:4222"}[k]
	}); err != nil {
		t.Fatal(err)
	}
	if c.Server != "10.0.0.1:25" || c.NATSURL != "nats://n:4222" {
		t.Errorf("env not applied: %+v", c)
	}
	for name, text := range map[string]string{
		"sendmail.cf": "V10/Berkeley\nO QueueDirectory=/var/spool/omqueue\n",
		"unknown":     "serverr = x:25\n",
		"bad":         "just words\n",
		"duration":    "timeout = forever\n",
	} {
		c := DefaultConfig()
		err := c.LoadFile(write(name, text))
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		if name == "sendmail.cf" && !strings.Contains(err.Error(), "sendmail.cf") {
			t.Errorf("%s: %v does not say it is a sendmail.cf", name, err)
		}
	}
	for _, bad := range []func(*Config){
		func(c *Config) { c.Server = "no-port" },
		func(c *Config) { c.TLS = "sometimes" },
		func(c *Config) { c.MaxMessageSize = 10 },
		func(c *Config) { c.QualifyDomain = "a b" },
		func(c *Config) { c.Timeout = 0 },
	} {
		c := DefaultConfig()
		bad(&c)
		if c.Validate() == nil {
			t.Errorf("Validate accepted %+v", c)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add("-ti\x00-f\x00me@x\x00a@b")
	f.Add("-qR\x00x\x00-v")
	f.Add("-q!\x00-O\x00Timeout.queuereturn=1d\x00-oQ")
	f.Add("--server\x00-d\x000\x00-bt")
	f.Fuzz(func(t *testing.T, s string) {
		args := strings.Split(s, "\x00")
		inv, err := Parse("sendmail", args)
		if err == nil && inv == nil {
			t.Fatal("nil invocation without an error")
		}
	})
}
