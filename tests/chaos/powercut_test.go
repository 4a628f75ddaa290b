//go:build chaos

package chaos

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mailfwd/mailfwd/bench/rig"
	"github.com/mailfwd/mailfwd/pkg/queue"
)

// TestPowerCut is what a 250 promises on one machine, tested by cutting the
// power: nats-server, the ingress and the body store run on an ext4 file
// system on a loop device; after the client got its 250s, the processes are
// frozen and the device's backing file is copied as it is, which is what a
// disk holds when the power goes: everything the file system flushed, nothing
// that was still only in the page cache (background writeback and the
// journal's timed commits are switched off for the few seconds this takes).
// The copy is then mounted (the journal replayed) and a new nats-server
// recovers the stream from it: every message answered 250 must be there.
//
// Rows: --nats-store-dir (the single-node setup), nats-server with
// sync_interval: always (round 1's), and a control without either
// (nats-server's default 2-minute sync): the control must lose mail in the
// same cut, or the harness could not tell.
func TestPowerCut(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: a loop device, mount, and two vm sysctls")
	}
	for _, tool := range []string{"losetup", "mkfs.ext4", "mount", "umount"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s", tool)
		}
	}
	n := envN("CHAOS_POWERCUT_N", 300)
	for _, tc := range []struct {
		name, what             string
		localStore, syncAlways bool
		mayLose                bool
	}{
		{"nats-store-dir", "flushed with --nats-store-dir", true, false, false},
		{"sync-always", "JetStream sync_interval: always", false, true, false},
		{"control", "control: default sync, no flush", false, false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			accepted, recovered := powerCut(t, n, tc.localStore, tc.syncAlways)
			missing := 0
			for _, qid := range accepted {
				if !recovered[qid] {
					missing++
				}
			}
			line := fmt.Sprintf("power cut (%s): %d accepted, %d recovered from the disk image, %d lost", tc.what, len(accepted), len(recovered), missing)
			t.Log(line)
			switch {
			case len(accepted) != n:
				t.Fatalf("only %d of %d messages got a 250 before the cut", len(accepted), n)
			case !tc.mayLose && missing > 0:
				t.Errorf("%d messages answered 250 are not on the disk after the cut", missing)
			case tc.mayLose && missing == 0:
				t.Errorf("the control lost nothing: the cut did not drop unsynced writes, so the flushed row proves nothing")
			}
			appendSummary(line)
		})
	}
}

// powerCut runs the load on a fresh loop file system, cuts the power, and
// returns the queue ids answered 250 and those found in the recovered stream.
func powerCut(t *testing.T, n int, localStore, syncAlways bool) (accepted []string, recovered map[string]bool) {
	t.Helper()
	work := t.TempDir()
	img := filepath.Join(work, "disk.img")
	mnt := mountImage(t, img, true)

	// No write reaches the device unless someone flushes: no periodic
	// writeback, nothing old enough to expire (the journal's commit interval
	// is the mount's commit=600).
	setSysctl(t, "vm/dirty_writeback_centisecs", "0")
	setSysctl(t, "vm/dirty_expire_centisecs", "360000")

	m, err := rig.StartMailfwd(tools, rig.MailfwdConfig{
		Dir: mnt, Blob: "file", Workers: -1, LocalStore: localStore, SyncAlways: syncAlways, Route: "127.0.0.1:9",
		IngressArgs: fastIngress,
	})
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			m.Close()
		}
	})
	l := newLedger()
	ld := &load{name: "cut", n: n, sessions: 5, size: 2000, addr: func() string { return m.SMTPAddr }, deadline: time.Minute}
	ld.Run(context.Background(), l)
	l.mu.Lock()
	for _, qid := range l.accepted {
		accepted = append(accepted, qid)
	}
	l.mu.Unlock()

	// The cut: freeze every writer, copy the device as it is.
	for _, p := range []*rig.Proc{m.Ingress, m.NATS.Proc} {
		if err := syscall.Kill(p.Pid(), syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
	}
	crash := filepath.Join(work, "crash.img")
	if out, err := exec.Command("cp", "--sparse=always", img, crash).CombinedOutput(); err != nil {
		t.Fatalf("copy the device: %v: %s", err, out)
	}
	for _, p := range []*rig.Proc{m.Ingress, m.NATS.Proc} {
		_ = p.Kill()
		_ = syscall.Kill(p.Pid(), syscall.SIGCONT)
	}
	m.Close()
	stopped = true

	// Power back on: the image after the cut, its journal replayed.
	mnt2 := mountImage(t, crash, false)
	ns, err := rig.StartNATS(tools.NATSServer, filepath.Join(mnt2, "nats"), false)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ns.Kill() })
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	q, err := queue.Connect(ctx, queue.Config{URL: ns.URL(), ClientName: "powercut"})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	recovered = map[string]bool{}
	// A recovered server may take a moment to load the stream; a stream
	// missing altogether (nothing was flushed) recovers no message.
	deadline := time.Now().Add(10 * time.Second)
	for {
		err = q.Scan(ctx, queue.Filter{}, func(e queue.Entry) error {
			if e.Env != nil {
				recovered[e.Env.QueueID] = true
			}
			return nil
		})
		if err == nil || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		t.Logf("scan of the recovered stream: %v (counted as nothing recovered)", err)
	}
	return accepted, recovered
}

// mountImage mounts an ext4 image (made fresh when mkfs) on a loop device
// with timed journal commits off; t.Cleanup unmounts and detaches it.
func mountImage(t *testing.T, img string, mkfs bool) string {
	t.Helper()
	run := func(name string, args ...string) string {
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
		}
		return strings.TrimSpace(string(out))
	}
	if mkfs {
		if err := os.WriteFile(img, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(img, 1<<30); err != nil {
			t.Fatal(err)
		}
		run("mkfs.ext4", "-q", "-F", img)
	}
	dev := run("losetup", "--find", "--show", img)
	mnt := img + ".mnt"
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	run("mount", "-o", "commit=600", dev, mnt)
	t.Cleanup(func() {
		_ = exec.Command("umount", "-l", mnt).Run()
		_ = exec.Command("losetup", "-d", dev).Run()
	})
	return mnt
}

// setSysctl sets /proc/sys/<key> for the test and restores it after.
func setSysctl(t *testing.T, key, value string) {
	t.Helper()
	path := filepath.Join("/proc/sys", key)
	old, err := os.ReadFile(path)
	if err != nil {
		t.Skipf("cannot read %s: %v", path, err)
	}
	if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
		t.Skipf("cannot set %s: %v", path, err)
	}
	t.Cleanup(func() { _ = os.WriteFile(path, old, 0o644) })
}
