package rig

import (
	"iter"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// PSS is the proportional set size of pid in KiB (smaps_rollup), 0 if it
// is gone: shared pages are split among the processes sharing them, so the
// PSS of several processes adds up to what they use together.
func PSS(pid int) int64 { return procKiB(pid, "smaps_rollup", "Pss") }

// procKiB is the KiB value of field (VmRSS, Pss, …) in /proc/pid/file, 0 if
// the process is gone or the field is not there.
func procKiB(pid int, file, field string) int64 {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), file))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
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
	isRoot := map[int]bool{}
	for _, r := range roots {
		if r > 0 {
			isRoot[r] = true
		}
	}
	var total int64
	for pid := range inTrees(procStats(), func(pid int) bool { return isRoot[pid] }) {
		total += PSS(pid)
	}
	return total
}

// procStats reads the stat of every live process, in one scan of /proc.
func procStats() map[int]procStat {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	stats := map[int]procStat{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, err := readStat(pid); err == nil {
			stats[pid] = st
		}
	}
	return stats
}

// inTrees yields each process of stats that is a root or descends from one
// (at most 64 generations below it), with its stat.
func inTrees(stats map[int]procStat, isRoot func(pid int) bool) iter.Seq2[int, procStat] {
	return func(yield func(int, procStat) bool) {
		for pid, st := range stats {
			for cur, hops := pid, 0; cur > 1 && hops < 64; hops++ {
				if isRoot(cur) {
					if !yield(pid, st) {
						return
					}
					break
				}
				cur = stats[cur].ppid
			}
		}
	}
}
