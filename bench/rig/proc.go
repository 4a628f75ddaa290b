// Package rig starts and measures the separate processes that the benchmark
// (bench/) and the chaos suite (tests/chaos) run: nats-server, MinIO, the
// mailfwd ingress and worker binaries, Postfix's smtp-sink and a private
// Postfix instance. Everything listens on 127.0.0.1 only.
package rig

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Proc is one child process with its output in a log file.
type Proc struct {
	Name    string
	Bin     string
	Args    []string
	Env     []string
	LogPath string

	mu     sync.Mutex
	cmd    *exec.Cmd
	done   chan struct{}
	err    error
	closed bool
}

// StartProc starts bin with args; stdout and stderr are appended to logPath.
func StartProc(name, logPath string, env []string, bin string, args ...string) (*Proc, error) {
	p := &Proc{Name: name, Bin: bin, Args: args, Env: env, LogPath: logPath}
	if err := p.Start(); err != nil {
		return nil, err
	}
	return p, nil
}

// Start (re)starts the process with the same command line. Starting a
// running process does nothing.
func (p *Proc) Start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		return nil
	}
	f, err := os.OpenFile(p.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("rig: %s log: %w", p.Name, err)
	}
	fmt.Fprintf(f, "=== rig: start %s %s at %s\n", p.Bin, strings.Join(p.Args, " "), time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(p.Bin, p.Args...)
	cmd.Env = append(os.Environ(), p.Env...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("rig: start %s (%s): %w", p.Name, p.Bin, err)
	}
	done := make(chan struct{})
	p.cmd, p.done, p.err = cmd, done, nil
	go func() {
		err := cmd.Wait()
		f.Close()
		p.mu.Lock()
		p.err = err
		p.mu.Unlock()
		close(done)
	}()
	return nil
}

// Pid is the process id, 0 when not running.
func (p *Proc) Pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

// Running reports whether the process was started and has not exited.
func (p *Proc) Running() bool {
	p.mu.Lock()
	done := p.done
	p.mu.Unlock()
	if done == nil {
		return false
	}
	select {
	case <-done:
		return false
	default:
		return true
	}
}

// Kill sends SIGKILL (a crash) and waits until the process is reaped.
func (p *Proc) Kill() error { return p.signal(syscall.SIGKILL, 0) }

// Stop sends SIGTERM, waits up to grace, then SIGKILL.
func (p *Proc) Stop(grace time.Duration) error { return p.signal(syscall.SIGTERM, grace) }

func (p *Proc) signal(sig syscall.Signal, grace time.Duration) error {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.cmd = nil
	p.mu.Unlock()
	if cmd == nil {
		return nil
	}
	_ = cmd.Process.Signal(sig)
	if sig != syscall.SIGKILL {
		select {
		case <-done:
			return nil
		case <-time.After(grace):
			_ = cmd.Process.Kill()
		}
	}
	select {
	case <-done:
		return nil
	case <-time.After(30 * time.Second):
		return fmt.Errorf("rig: %s pid %d did not exit 30s after SIGKILL", p.Name, cmd.Process.Pid)
	}
}

// CPU is the user+system CPU time of the process and its descendants.
func (p *Proc) CPU() time.Duration {
	pid := p.Pid()
	if pid == 0 {
		return 0
	}
	return TreeCPU(pid)
}

// clockTick is USER_HZ (100 on every Linux this runs on).
const clockTick = 10 * time.Millisecond

type procStat struct {
	pid, ppid   int
	self, child time.Duration // utime+stime, cutime+cstime
}

func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return procStat{}, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')') // comm may contain spaces
	if i < 0 {
		return procStat{}, fmt.Errorf("rig: /proc/%d/stat: no comm", pid)
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); utime is field 14 → f[11].
	if len(f) < 15 {
		return procStat{}, fmt.Errorf("rig: /proc/%d/stat: short", pid)
	}
	num := func(k int) int64 { v, _ := strconv.ParseInt(f[k], 10, 64); return v }
	return procStat{
		pid:   pid,
		ppid:  int(num(1)),
		self:  time.Duration(num(11)+num(12)) * clockTick,
		child: time.Duration(num(13)+num(14)) * clockTick,
	}, nil
}

// TreeCPU sums utime+stime of root and every live descendant, plus the
// cutime+cstime they hold for children already reaped (Postfix's smtpd and
// cleanup processes come and go; their time lands in master's cutime).
func TreeCPU(root int) time.Duration {
	var total time.Duration
	for _, st := range inTrees(procStats(), func(pid int) bool { return pid == root }) {
		total += st.self + st.child
	}
	return total
}

// FreePort returns a free TCP port on 127.0.0.1.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("rig: free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// WaitTCP waits until addr accepts a TCP connection (and, when greeting is
// true, sends its first line, as an SMTP server does).
func WaitTCP(addr string, timeout time.Duration, greeting bool) error {
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			if !greeting {
				c.Close()
				return nil
			}
			_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
			buf := make([]byte, 512)
			n, err := c.Read(buf)
			c.Close()
			if err == nil && n > 0 && strings.HasPrefix(string(buf[:n]), "220") {
				return nil
			}
			if err == nil {
				err = fmt.Errorf("greeting %q", buf[:n])
			}
		}
		last = err
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("rig: %s not ready after %v: %w", addr, timeout, last)
}

// errNotFound is returned when a required binary is missing.
var errNotFound = errors.New("not found")

// LookBin returns the first executable among candidates.
func LookBin(candidates ...string) (string, error) {
	for _, c := range candidates {
		if c == "" {
			continue
		}
		if strings.ContainsRune(c, '/') {
			if st, err := os.Stat(c); err == nil && st.Mode().IsRegular() && st.Mode().Perm()&0o111 != 0 {
				return c, nil
			}
			continue
		}
		if p, err := exec.LookPath(c); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("rig: none of %v: %w", candidates, errNotFound)
}
