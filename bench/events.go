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

// eventSystems are the stacks compared: events on (as shipped), only the
// failure types (--events-types), and off (--events=false); off is the base.
var eventSystems = []struct{ name, label string }{
	{"mailfwd-file-sync", "on"},
	{"mailfwd-file-sync-failures", "failures"},
	{"mailfwd-file-sync-noevents", "off"},
}

// eventsCost runs mailfwd-file-sync with the event stream on (the default),
// with failure events only, and off, run by run in random order, and
// prints the CPU per message (every process: nats-server, ingress, worker)
// and the rates of each against off.
func eventsCost(ctx context.Context, tools rig.Tools, work string, o options, rec *recorder) error {
	runs := envInt("BENCH_EVENTS_RUNS", max(o.runs, 7))
	// The CPU clock ticks at 10 ms per process: 3000 messages make that
	// about 3 µs per message and process.
	o.n = envInt("BENCH_EVENTS_N", map[bool]int{true: 1000, false: 3000}[o.quick])
	fmt.Printf("\n== event stream cost (mailfwd-file-sync with events on, failures only and off, separate processes; N=%d, %d interleaved runs; medians)\n", o.n, runs)
	systems := make([]*system, len(eventSystems))
	defer func() {
		for _, s := range systems {
			if s != nil {
				s.close()
			}
		}
	}()
	for i, es := range eventSystems {
		var err error
		if systems[i], err = startSystem(tools, filepath.Join(work, "events"), es.name, nil); err != nil {
			return err
		}
	}
	base := len(systems) - 1
	fmt.Printf("  %-20s %-9s %10s %9s %14s %10s\n", "cell", "events", "cpu/msg", "vs off", "pairs' median", "e2e/s")
	for _, c := range eventCells {
		smps := make([][]sample, len(systems))
		parts := make([]map[string][]float64, len(systems)) // µs per message by process
		ratios := make([][]float64, len(systems))
		for i := range parts {
			parts[i] = map[string][]float64{}
		}
		for r := range runs {
			round := make([]sample, len(systems))
			for _, k := range rand.Perm(len(systems)) {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				s := systems[k]
				p0 := s.procs()
				smp := measure(tools, s, c, o.n)
				for name, t := range s.procs() {
					parts[k][name] = append(parts[k][name], float64((t-p0[name]).Microseconds())/float64(o.n))
				}
				rec.write("events", s, c, o.n, r, smp)
				smps[k] = append(smps[k], smp)
				round[k] = smp
			}
			for k := range systems {
				if round[k].err == nil && round[base].err == nil && round[base].cpu > 0 {
					ratios[k] = append(ratios[k], float64(round[k].cpu)/float64(round[base].cpu))
				}
			}
		}
		off := summarize(smps[base], o.n, true)
		for k, es := range eventSystems {
			st := summarize(smps[k], o.n, true)
			fmt.Printf("  %-20s %-9s %7s ms %+8.1f%% %+13.1f%% %10s%s\n", c, es.label, f3(st.cpu),
				100*(st.cpu/off.cpu-1), 100*(median(ratios[k])-1), f1(st.e2e), failNote(st))
		}
		fmt.Printf("  %-20s %s\n", "", procShares(parts, eventSystems[0].label, eventSystems[1].label, eventSystems[2].label))
	}
	fmt.Println("  goal: events on cost at most 10 % more CPU per message (docs/events.md)")
	return nil
}

// procShares is each process's median CPU per message in each stack.
func procShares(parts []map[string][]float64, labels ...string) string {
	var names []string
	for name := range parts[0] {
		names = append(names, name)
	}
	slices.Sort(names)
	var b strings.Builder
	b.WriteString("µs/msg " + strings.Join(labels, "/") + ":")
	for _, name := range names {
		var v []string
		for _, p := range parts {
			v = append(v, fmt.Sprintf("%.0f", median(p[name])))
		}
		fmt.Fprintf(&b, " %s %s", name, strings.Join(v, "/"))
	}
	return b.String()
}
