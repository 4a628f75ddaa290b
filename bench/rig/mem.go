package rig

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// PSS is the proportional set size of pid in KiB (smaps_rollup), 0 if it
// is gone: shared pages are split among the processes sharing them, so the
// PSS of several processes adds up to what they use together.
func PSS(pid int) int64 {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "smaps_rollup"))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Pss:"); ok {
			kib, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kib
		}
	}
	return 0
}

// TreePSS sums the PSS (KiB) of the roots and all their live descendants.
// Every system of the bench is measured this way (mailfwd: nats-server,
// ingress and workers as roots; Postfix: master and its children; maddy:
// its process), with one scan of /proc per sample.
func TreePSS(roots ...int) int64 {
	ents, err := os.ReadDir("/proc")
	if err != nil || len(roots) == 0 {
		return 0
	}
	isRoot := map[int]bool{}
	for _, r := range roots {
		if r > 0 {
			isRoot[r] = true
		}
	}
	parent := map[int]int{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, err := readStat(pid); err == nil {
			parent[pid] = st.ppid
		}
	}
	var total int64
	for pid := range parent {
		for cur, hops := pid, 0; cur > 1 && hops < 64; hops++ {
			if isRoot[cur] {
				total += PSS(pid)
				break
			}
			cur = parent[cur]
		}
	}
	return total
}
