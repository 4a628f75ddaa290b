package rig

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Maddy is a maddy (github.com/foxcpp/maddy) process configured as a
// queueing relay: its smtp endpoint accepts any recipient from loopback
// into target.queue (messages on disk, retried), which delivers through
// target.smtp to one next hop. Built by scripts/maddy.sh.
type Maddy struct {
	*Proc
	SMTPAddr string
}

// maddyConf is the whole configuration: no TLS, no auth, no checks, the
// documented defaults otherwise (queue max_parallelism 16, buffer auto 1M).
const maddyConf = `state_dir %[1]s/state
runtime_dir %[1]s/run
hostname maddy.bench.test
tls off
log %[1]s/maddy.log

target.smtp sink {
    starttls no
    targets tcp://%[3]s
}

target.queue relay_queue {
    location %[1]s/queue
    target &sink
    max_tries 20
}

smtp tcp://%[2]s {
    hostname maddy.bench.test
    deliver_to &relay_queue
}
`

// StartMaddy writes the configuration under dir and starts bin. relay is
// the next hop (host:port).
func StartMaddy(bin, dir, relay string) (*Maddy, error) {
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	for _, d := range []string{"state", "run", "queue"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, fmt.Errorf("rig: maddy dir: %w", err)
		}
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	conf := filepath.Join(dir, "maddy.conf")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(maddyConf, dir, addr, relay)), 0o644); err != nil {
		return nil, fmt.Errorf("rig: maddy config: %w", err)
	}
	p, err := StartProc("maddy", filepath.Join(dir, "maddy-stderr.log"), nil, bin, "--config", conf, "run")
	if err != nil {
		return nil, err
	}
	if err := WaitTCP(addr, 60*time.Second, true); err != nil {
		_ = p.Kill()
		b, _ := os.ReadFile(filepath.Join(dir, "maddy.log"))
		e, _ := os.ReadFile(p.LogPath)
		return nil, fmt.Errorf("%w\n--- maddy log ---\n%s%s", err, tailString(string(b), 3000), tailString(string(e), 2000))
	}
	return &Maddy{Proc: p, SMTPAddr: addr}, nil
}

func tailString(s string, n int) string {
	if len(s) > n {
		s = s[len(s)-n:]
	}
	return strings.TrimSpace(s) + "\n"
}

// FindMaddy returns the pinned maddy binary built by scripts/maddy.sh
// (MAILFWD_MADDY_BIN overrides), or "".
func FindMaddy() string {
	home, _ := os.UserHomeDir()
	b, _ := LookBin(os.Getenv("MAILFWD_MADDY_BIN"), filepath.Join(home, ".cache", "mailfwd", "bin", "maddy-v0.8.1"))
	return b
}
