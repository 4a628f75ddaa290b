package main

import (
	"context"
	"fmt"
	"math/rand"
	"path/filepath"
	"slices"
	"strings"

	"github.com/mailfwd/mailfwd/bench/rig"
)

// eventCells are the workloads of the event-stream section: one recipient
// per message (two events per message: received, delivered) and ten (twenty).
var eventCells = []cell{{1, 10, 1, true}, {1, 10, 1, false}, {1, 10, 10, true}}

// eventsCost runs mailfwd-file-sync with the event stream on (the default)
// and off (--events=false on ingress and worker), run by run in random
// order, and prints the CPU per message (every process: nats-server,
// ingress, worker) and the rates, on against off.
func eventsCost(ctx context.Context, tools rig.Tools, work string, o options, rec *recorder) error {
	runs := envInt("BENCH_EVENTS_RUNS", max(o.runs, 7))
	// The CPU clock ticks at 10 ms per process: 3000 messages make that
	// about 3 µs per message and process.
	o.n = envInt("BENCH_EVENTS_N", map[bool]int{true: 1000, false: 3000}[o.quick])
	fmt.Printf("\n== event stream cost (mailfwd-file-sync with events on and off, separate processes; N=%d, %d interleaved runs; medians)\n", o.n, runs)
	var on, off *system
	defer func() {
		for _, s := range []*system{on, off} {
			if s != nil {
				s.close()
			}
		}
	}()
	var err error
	if on, err = startSystem(tools, filepath.Join(work, "events"), "mailfwd-file-sync", nil); err != nil {
		return err
	}
	if off, err = startSystem(tools, filepath.Join(work, "events"), "mailfwd-file-sync-noevents", nil); err != nil {
		return err
	}
	systems := []*system{on, off}
	fmt.Printf("  %-20s %12s %12s %8s %14s %10s %10s\n", "cell", "cpu on", "cpu off", "on/off", "pairs' median", "e2e/s on", "e2e/s off")
	for _, c := range eventCells {
		smps := map[*system][]sample{}
		parts := map[*system]map[string][]float64{on: {}, off: {}} // µs per message by process
		var ratios []float64
		for r := range runs {
			var pair [2]sample
			for _, k := range rand.Perm(2) {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				s := systems[k]
				p0 := s.procs()
				smp := measure(tools, s, c, o.n)
				for name, t := range s.procs() {
					parts[s][name] = append(parts[s][name], float64((t-p0[name]).Microseconds())/float64(o.n))
				}
				rec.write("events", s, c, o.n, r, smp)
				smps[s] = append(smps[s], smp)
				pair[k] = smp
			}
			if pair[0].err == nil && pair[1].err == nil && pair[1].cpu > 0 {
				ratios = append(ratios, float64(pair[0].cpu)/float64(pair[1].cpu))
			}
		}
		a, b := summarize(smps[on], o.n, true), summarize(smps[off], o.n, true)
		fmt.Printf("  %-20s %9s ms %9s ms %+7.1f%% %+13.1f%% %10s %10s%s%s\n", c, f3(a.cpu), f3(b.cpu),
			100*(a.cpu/b.cpu-1), 100*(median(ratios)-1), f1(a.e2e), f1(b.e2e), failNote(a), failNote(b))
		fmt.Printf("  %-20s %s\n", "", procShares(parts[on], parts[off]))
	}
	fmt.Println("  goal: events on cost at most 10 % more CPU per message (docs/events.md)")
	return nil
}

// procShares is each process's median CPU per message, events on → off.
func procShares(on, off map[string][]float64) string {
	var names []string
	for name := range on {
		names = append(names, name)
	}
	slices.Sort(names)
	var b strings.Builder
	b.WriteString("µs/msg on→off:")
	for _, name := range names {
		fmt.Fprintf(&b, " %s %.0f→%.0f", name, median(on[name]), median(off[name]))
	}
	return b.String()
}
