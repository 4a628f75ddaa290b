package rig

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Postfix is a private, stock Postfix instance (its own config_directory,
// queue_directory and data_directory) relaying everything to one host. The
// system Postfix is not touched.
type Postfix struct {
	Dir      string
	SMTPAddr string
	bin      string
	conf     string
}

// masterCF is a stock master.cf reduced to what a relay uses, without
// chroot, plus an smtpd on our own port.
const masterCF = `%s inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
`

// StartPostfix writes the configuration under dir and runs `postfix -c
// dir/etc start`. relay is the next hop (host:port).
func StartPostfix(bin, dir, relay string) (*Postfix, error) {
	return StartPostfixConf(bin, dir, relay, "")
}

// StartPostfixConf is StartPostfix with extra main.cf lines (they come
// last, so they override).
func StartPostfixConf(bin, dir, relay, extra string) (*Postfix, error) {
	pf, err := user.Lookup("postfix")
	if err != nil {
		return nil, fmt.Errorf("rig: postfix user: %w (is the postfix package installed?)", err)
	}
	uid, _ := strconv.Atoi(pf.Uid)
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	p := &Postfix{Dir: dir, SMTPAddr: "127.0.0.1:" + strconv.Itoa(port), bin: bin, conf: filepath.Join(dir, "etc")}
	for _, d := range []string{"etc", "spool", "data"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, fmt.Errorf("rig: postfix dir: %w", err)
		}
	}
	if err := os.Chown(filepath.Join(dir, "data"), uid, -1); err != nil {
		return nil, fmt.Errorf("rig: postfix data dir: %w", err)
	}
	_ = os.Chmod(filepath.Join(dir, "data"), 0o700)
	host, rport, _ := strings.Cut(relay, ":")
	mainCF := fmt.Sprintf(`compatibility_level = 3.6
myhostname = postfix.bench.test
mydomain = bench.test
myorigin = $myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [%s]:%s
queue_directory = %s
data_directory = %s
maillog_file = %s
maillog_file_prefixes = %s
alias_maps =
alias_database =
local_recipient_maps =
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtp_tls_security_level = none
smtpd_tls_security_level = none
biff = no
%s`, host, rport, filepath.Join(dir, "spool"), filepath.Join(dir, "data"), filepath.Join(dir, "maillog"), dir, extra)
	if err := os.WriteFile(filepath.Join(p.conf, "main.cf"), []byte(mainCF), 0o644); err != nil {
		return nil, fmt.Errorf("rig: postfix main.cf: %w", err)
	}
	if err := os.WriteFile(filepath.Join(p.conf, "master.cf"), []byte(fmt.Sprintf(masterCF, p.SMTPAddr)), 0o644); err != nil {
		return nil, fmt.Errorf("rig: postfix master.cf: %w", err)
	}
	// check creates the queue directories with their owners.
	if out, err := exec.Command(bin, "-c", p.conf, "check").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("rig: postfix check: %w\n%s%s", err, out, p.logTail())
	}
	if out, err := exec.Command(bin, "-c", p.conf, "start").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("rig: postfix start: %w\n%s%s", err, out, p.logTail())
	}
	if err := WaitTCP(p.SMTPAddr, 30*time.Second, true); err != nil {
		p.Stop()
		return nil, fmt.Errorf("%w%s", err, p.logTail())
	}
	return p, nil
}

func (p *Postfix) logTail() string {
	b, _ := os.ReadFile(filepath.Join(p.Dir, "maillog"))
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return "\n--- postfix maillog ---\n" + string(b)
}

// MasterPid is the pid of this instance's master daemon.
func (p *Postfix) MasterPid() int {
	b, err := os.ReadFile(filepath.Join(p.Dir, "spool", "pid", "master.pid"))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// CPU is the CPU time of master and all its children (live ones and those
// already reaped, which master's cutime/cstime hold).
func (p *Postfix) CPU() time.Duration {
	if pid := p.MasterPid(); pid > 0 {
		return TreeCPU(pid)
	}
	return 0
}

// QueueEmpty reports whether `postqueue -p` shows an empty queue.
func (p *Postfix) QueueEmpty() bool {
	out, err := exec.Command("postqueue", "-c", p.conf, "-p").CombinedOutput()
	return err == nil && strings.Contains(string(out), "Mail queue is empty")
}

// Stop runs `postfix stop` and waits for master to exit (then kills what is left).
func (p *Postfix) Stop() {
	pid := p.MasterPid()
	_ = exec.Command(p.bin, "-c", p.conf, "stop").Run()
	deadline := time.Now().Add(15 * time.Second)
	for pid > 0 && time.Now().Before(deadline) {
		st, err := readStat(pid)
		if err != nil || st.ppid == 0 || isZombie(pid) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	if pid > 0 {
		_ = exec.Command(p.bin, "-c", p.conf, "abort").Run()
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

func isZombie(pid int) bool {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && len(s) > i+2 && s[i+2] == 'Z'
}
