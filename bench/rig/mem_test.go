package rig

import (
	"os"
	"os/exec"
	"testing"
	"time"
)

// TestProcReaders reads this test's own process and a child of it: every
// figure is there, and the tree sums take in the child.
func TestProcReaders(t *testing.T) {
	self := os.Getpid()
	child := exec.Command("sleep", "30")
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = child.Process.Kill(); _ = child.Wait() })
	for deadline := time.Now().Add(5 * time.Second); RSS(child.Process.Pid) == 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond) // until the child has exec'd sleep
	}
	rss, peak, pss := RSS(self), PeakRSS(self), PSS(self)
	if rss <= 0 || peak < rss || pss <= 0 {
		t.Fatalf("RSS %d, PeakRSS %d, PSS %d KiB of this process", rss, peak, pss)
	}
	if RSS(0) != 0 || PSS(-1) != 0 {
		t.Errorf("RSS(0) %d, PSS(-1) %d; want 0", RSS(0), PSS(-1))
	}
	childPSS := PSS(child.Process.Pid)
	if tree := TreePSS(self); childPSS <= 0 || tree < pss+childPSS/2 {
		t.Errorf("TreePSS %d KiB, this process %d, its child %d", tree, pss, childPSS)
	}
	if TreePSS() != 0 {
		t.Errorf("TreePSS of no roots: %d", TreePSS())
	}
	for start := time.Now(); time.Since(start) < 50*time.Millisecond; {
	}
	if TreeCPU(self) <= 0 {
		t.Errorf("TreeCPU of this process %v", TreeCPU(self))
	}
}
