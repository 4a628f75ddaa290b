package main

import (
	"encoding/csv"
	"fmt"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
)

// recorder writes one CSV row per run.
type recorder struct {
	path string
	f    *os.File
	w    *csv.Writer
}

func newRecorder(path string) (*recorder, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("results: %w", err)
	}
	r := &recorder{path: path, f: f, w: csv.NewWriter(f)}
	_ = r.w.Write([]string{"section", "system", "durability", "mode", "size_kib", "sessions", "rcpts", "n", "run",
		"accept_s", "e2e_s", "accept_msgs_per_s", "e2e_msgs_per_s", "cpu_ms_per_msg", "machine_cpu_ms_per_msg", "rss_peak_mib", "load1", "error"})
	return r, nil
}

func (r *recorder) write(section string, s *system, c cell, n, run int, smp sample) {
	errText := ""
	if smp.err != nil {
		errText = smp.err.Error()
	}
	cpu := ""
	if s.cpu != nil && smp.err == nil {
		cpu = f3(smp.cpuPerMsg(n))
	}
	row := []string{section, s.name, s.durability, c.mode(), strconv.Itoa(c.sizeKiB), strconv.Itoa(c.sessions), strconv.Itoa(c.rcpts),
		strconv.Itoa(n), strconv.Itoa(run + 1), f3(smp.accept.Seconds()), f3(smp.e2e.Seconds()),
		f1(smp.acceptRate(n)), f1(smp.e2eRate(n)), cpu, f3(smp.machinePerMsg(n)), f1(float64(smp.rssKiB) / 1024), strings.Fields(loadavg() + " ?")[0], errText}
	_ = r.w.Write(row)
	r.w.Flush()
}

func (r *recorder) close() {
	r.w.Flush()
	_ = r.f.Close()
}

func f1(v float64) string {
	if math.IsInf(v, 0) || math.IsNaN(v) {
		return ""
	}
	return strconv.FormatFloat(v, 'f', 1, 64)
}

func f3(v float64) string {
	if math.IsInf(v, 0) || math.IsNaN(v) {
		return ""
	}
	return strconv.FormatFloat(v, 'f', 3, 64)
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// stats are the medians of a cell for one system (failed runs excluded).
type stats struct {
	accept, e2e, cpu, machine float64
	rssMiB                    float64 // median of the runs' peaks
	ok, failed                int
}

func summarize(smps []sample, n int, relay bool) stats {
	var a, e, c, mc, rss []float64
	st := stats{}
	for _, s := range smps {
		if s.err != nil {
			st.failed++
			continue
		}
		st.ok++
		a = append(a, s.acceptRate(n))
		mc = append(mc, s.machinePerMsg(n))
		e = append(e, s.e2eRate(n))
		if s.rssKiB > 0 {
			rss = append(rss, float64(s.rssKiB)/1024)
		}
		if relay {
			c = append(c, s.cpuPerMsg(n))
		}
	}
	st.accept, st.e2e, st.cpu, st.machine, st.rssMiB = median(a), median(e), median(c), median(mc), median(rss)
	return st
}

func printCell(c cell, n int, systems []*system, results map[string][]sample) {
	pf := stats{e2e: math.NaN(), cpu: math.NaN()}
	ceil := stats{e2e: math.NaN()}
	for _, s := range systems {
		st := summarize(results[c.String()+"|"+s.name], n, s.cpu != nil)
		switch s.name {
		case "postfix":
			pf = st
		case "ceiling":
			ceil = st
		}
	}
	mode := "a new connection per message"
	if c.reuse {
		mode = "sessions reused (-d)"
	}
	fmt.Printf("\n%s  (%s, %d KiB, %d sessions, %d recipients; medians)\n", c, mode, c.sizeKiB, c.sessions, c.rcpts)
	fmt.Printf("  %-18s %10s %10s %12s %10s %10s %10s %10s %8s  %s\n", "system", "accept/s", "e2e/s", "cpu ms/msg", "e2e/pfx", "cpu/pfx", "e2e/ceil", "host ms", "rss MiB", "durability")
	for _, s := range systems {
		st := summarize(results[c.String()+"|"+s.name], n, s.cpu != nil)
		fail := ""
		if st.failed > 0 {
			fail = fmt.Sprintf("  (%d failed runs)", st.failed)
		}
		fmt.Printf("  %-18s %10s %10s %12s %10s %10s %10s %10s %8s  %s%s\n", s.name, f1(st.accept), f1(st.e2e), f3(st.cpu),
			ratio(st.e2e, pf.e2e), ratio(st.cpu, pf.cpu), ratio(st.e2e, ceil.e2e), f3(st.machine), f1(st.rssMiB), s.durability, fail)
	}
}

func ratio(a, b float64) string {
	if math.IsNaN(a) || math.IsNaN(b) || b == 0 {
		return "-"
	}
	return strconv.FormatFloat(a/b, 'f', 2, 64)
}

func writeSummary(path string, cells []cell, n int, systems []*system, results map[string][]sample) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("summary: %w", err)
	}
	defer f.Close()
	w := csv.NewWriter(f)
	_ = w.Write([]string{"mode", "size_kib", "sessions", "rcpts", "system", "durability", "runs_ok", "runs_failed",
		"accept_msgs_per_s", "e2e_msgs_per_s", "cpu_ms_per_msg", "machine_cpu_ms_per_msg", "rss_peak_mib",
		"e2e_vs_postfix", "cpu_vs_postfix", "e2e_vs_ceiling"})
	for _, c := range cells {
		pf := summarize(results[c.String()+"|postfix"], n, true)
		ceil := summarize(results[c.String()+"|ceiling"], n, false)
		for _, s := range systems {
			st := summarize(results[c.String()+"|"+s.name], n, s.cpu != nil)
			_ = w.Write([]string{c.mode(), strconv.Itoa(c.sizeKiB), strconv.Itoa(c.sessions), strconv.Itoa(c.rcpts), s.name, s.durability,
				strconv.Itoa(st.ok), strconv.Itoa(st.failed), f1(st.accept), f1(st.e2e), f3(st.cpu), f3(st.machine), f1(st.rssMiB),
				ratio(st.e2e, pf.e2e), ratio(st.cpu, pf.cpu), ratio(st.e2e, ceil.e2e)})
		}
	}
	w.Flush()
	return w.Error()
}

// printGoal checks the goal in every cell with 10 or more sessions:
// mailfwd e2e ≥ 2× Postfix and CPU/msg ≤ ½ Postfix.
func printGoal(cells []cell, n int, systems []*system, results map[string][]sample) {
	fmt.Println("\ngoal (cells with ≥10 sessions): mailfwd end-to-end ≥ 2× Postfix and CPU/msg ≤ 0.5× Postfix")
	for _, s := range systems {
		if !strings.HasPrefix(s.name, "mailfwd") {
			continue
		}
		met, total := 0, 0
		var worstE, worstC float64 = math.Inf(1), 0
		for _, c := range cells {
			if c.sessions < 10 {
				continue
			}
			pf := summarize(results[c.String()+"|postfix"], n, true)
			st := summarize(results[c.String()+"|"+s.name], n, true)
			if math.IsNaN(pf.e2e) || math.IsNaN(st.e2e) {
				continue
			}
			total++
			e, cp := st.e2e/pf.e2e, st.cpu/pf.cpu
			worstE, worstC = math.Min(worstE, e), math.Max(worstC, cp)
			if e >= 2 && cp <= 0.5 {
				met++
			}
		}
		if total == 0 {
			continue
		}
		fmt.Printf("  %-18s met in %d of %d cells; worst e2e ratio %.2f, worst CPU ratio %.2f\n", s.name, met, total, worstE, worstC)
	}
	// The replicated cluster against the single node (goal: within 30 %).
	for _, pair := range [][2]string{{"mailfwd-r3", "mailfwd-file-sync"}, {"mailfwd-chart", "mailfwd-file-sync"}} {
		worst, within, total := math.Inf(1), 0, 0
		for _, c := range cells {
			a := summarize(results[c.String()+"|"+pair[0]], n, true)
			b := summarize(results[c.String()+"|"+pair[1]], n, true)
			if math.IsNaN(a.e2e) || math.IsNaN(b.e2e) {
				continue
			}
			total++
			r := a.e2e / b.e2e
			worst = math.Min(worst, r)
			if r >= 0.7 {
				within++
			}
		}
		if total > 0 {
			fmt.Printf("  %s e2e within 30%% of %s in %d of %d cells; worst ratio %.2f\n", pair[0], pair[1], within, total, worst)
		}
	}
}
