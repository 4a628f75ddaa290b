package main

// The smart-sink workload (KumoMTA's method): recipients in 1000 domains;
// the destination answers RCPT with a 4xx for about 5 % of the recipients
// (the first time only: the retry is accepted) and a 5xx for about 2 %,
// the shares varying per domain (0–10 % and 0–4 %), and 1 domain in 100 is
// slow (each RCPT answered after 300 ms). Every relay must retry each 4xx
// and deliver it exactly once, bounce each 5xx exactly once (the DSN comes
// back to the same destination, as the sender's domain routes there too)
// and deliver every other recipient exactly once.

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"hash/fnv"
	"math/rand"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailfwd/mailfwd/bench/rig"
	"github.com/mailfwd/mailfwd/pkg/sink"
)

const (
	smartDomains  = 1000
	smartSlowEach = 100 // every 100th domain is slow
	smartSlow     = 300 * time.Millisecond
)

func hash32(s string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(s))
	return h.Sum32()
}

// smartReply is the destination's decision for a recipient: "5" (550
// always), "4" (450 the first time), or "" (250).
func smartReply(rcpt string) string {
	local, dom, ok := strings.Cut(rcpt, "@")
	if !ok || !strings.HasSuffix(dom, ".smart.test") {
		return ""
	}
	p4 := float64(hash32("4"+dom)%101) / 1000 // 0–10 %, mean 5 %
	p5 := float64(hash32("5"+dom)%41) / 1000  // 0–4 %, mean 2 %
	u := float64(hash32(local+"@"+dom)%10000) / 10000
	switch {
	case u < p5:
		return "5"
	case u < p5+p4:
		return "4"
	}
	return ""
}

func smartSlowDomain(rcpt string) bool {
	_, dom, _ := strings.Cut(rcpt, "@")
	n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimPrefix(dom, "d"), ".smart.test"))
	return err == nil && n%smartSlowEach == 7
}

// smartSinkConfig is the destination's behaviour.
func smartSinkConfig() sink.Config {
	return sink.Config{
		Hostname: "dest.smart.test",
		OnRcpt: func(rcpt string, seen int) *smtp.SMTPError {
			if smartSlowDomain(rcpt) {
				time.Sleep(smartSlow)
			}
			switch smartReply(rcpt) {
			case "5":
				return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
			case "4":
				if seen == 0 {
					return &smtp.SMTPError{Code: 450, EnhancedCode: smtp.EnhancedCode{4, 2, 1}, Message: "try again later"}
				}
			}
			return nil
		},
	}
}

// bouncedIn returns the recipients a DSN reports as failed.
func bouncedIn(data []byte) []string {
	var out []string
	var final string
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if v, ok := cutFold(line, "Final-Recipient:"); ok {
			_, addr, _ := strings.Cut(v, ";")
			final = strings.Trim(strings.TrimSpace(addr), "<>")
		} else if v, ok := cutFold(line, "Action:"); ok && final != "" {
			if strings.EqualFold(strings.TrimSpace(v), "failed") {
				out = append(out, final)
			}
			final = ""
		}
	}
	return out
}

func cutFold(s, prefix string) (string, bool) {
	if len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix) {
		return s[len(prefix):], true
	}
	return "", false
}

// smartResult is one relay's run.
type smartResult struct {
	n, rcpts         int
	accept           time.Duration // injection time
	final            time.Duration // until every recipient had its outcome
	p50, p99         time.Duration // per recipient, 250 at the relay → outcome at the destination
	cpu              time.Duration
	retried, bounced int // 4xx recipients delivered after a retry; 5xx recipients bounced once
	tempfails, perms int
	violations       []string
	deliveredTwice   int
	err              error
}

func smartSink(ctx context.Context, tools rig.Tools, work string, o options) error {
	n := envInt("BENCH_SMART_N", map[bool]int{true: 300, false: 1000}[o.quick])
	const rcptsPerMsg = 2
	fmt.Printf("\n== smart sink: %d messages × %d recipients in %d domains; ~5%% RCPT 4xx (first try), ~2%% 5xx, varying per domain; 1 domain in %d answers after %v; retries after 1-2 s; load average now %s\n",
		n, rcptsPerMsg, smartDomains, smartSlowEach, smartSlow, loadavg())
	fmt.Printf("%-18s %9s %9s %10s %10s %10s %11s %9s %9s %s\n", "system", "accept/s", "final s", "p50", "p99", "cpu ms/msg", "4xx→retry", "5xx→DSN", "dup", "check")
	for _, name := range rand.Perm(2) {
		sysName := []string{"postfix", "mailfwd-file-sync"}[name]
		dest, err := startWANDest(true, 0, smartSinkConfig())
		if err != nil {
			return err
		}
		r, err := startWANRelay(tools, work, sysName, dest.Addr(),
			"queue_run_delay = 1s\nminimal_backoff_time = 1s\nmaximal_backoff_time = 2s\n",
			[]string{"--retry-first", "1s", "--retry-max", "2s"})
		if err != nil {
			dest.close()
			return fmt.Errorf("start %s: %w", sysName, err)
		}
		res := runSmart(ctx, r, dest, n, rcptsPerMsg)
		r.close()
		dest.close()
		check := "ok"
		if res.err != nil {
			check = res.err.Error()
		} else if len(res.violations) > 0 {
			check = fmt.Sprintf("%d violations, e.g. %s", len(res.violations), res.violations[0])
		}
		fmt.Printf("%-18s %9.1f %9.1f %10s %10s %10.2f %5d/%-5d %4d/%-4d %9d %s\n", sysName,
			float64(n)/res.accept.Seconds(), res.final.Seconds(), res.p50.Round(time.Millisecond), res.p99.Round(time.Millisecond),
			float64(res.cpu.Microseconds())/1000/float64(n), res.retried, res.tempfails, res.bounced, res.perms, res.deliveredTwice, check)
	}
	return nil
}

func runSmart(ctx context.Context, r *wanRelay, dest *wanDest, n, per int) smartResult {
	res := smartResult{n: n, rcpts: n * per}
	rng := rand.New(rand.NewSource(1))
	rcptsOf := make([][]string, n)
	all := map[string]int{} // recipient → message index
	for i := range rcptsOf {
		for k := range per {
			addr := fmt.Sprintf("u%d-%d@d%d.smart.test", i, k, rng.Intn(smartDomains))
			rcptsOf[i] = append(rcptsOf[i], addr)
			all[addr] = i
			switch smartReply(addr) {
			case "4":
				res.tempfails++
			case "5":
				res.perms++
			}
		}
	}
	cpu0 := r.cpu()
	inj := &injected{at: map[string]time.Time{}}
	start := time.Now()
	if err := inject(r.addr, n, 10, 1, "smart", func(i int) []string { return rcptsOf[i] }, inj); err != nil {
		res.err = err
		return res
	}
	res.accept = time.Since(start)
	idAt := func(i int) time.Time { return inj.at[fmt.Sprintf("<smart-%d@bench.test>", i)] }

	// Wait until every recipient has an outcome at the destination.
	deadline := time.Now().Add(5*time.Minute + time.Duration(n)*20*time.Millisecond)
	var outcome map[string]time.Time
	var delivered, bounced map[string]int
	for {
		outcome, delivered, bounced = map[string]time.Time{}, map[string]int{}, map[string]int{}
		for _, m := range dest.sink.Messages() {
			if m.From == "" {
				for _, a := range bouncedIn(m.Data) {
					bounced[a]++
					if _, ok := outcome[a]; !ok {
						outcome[a] = m.At
					}
				}
				continue
			}
			for _, a := range m.Recipients {
				delivered[a]++
				if _, ok := outcome[a]; !ok {
					outcome[a] = m.At
				}
			}
		}
		if len(outcome) >= len(all) || time.Now().After(deadline) || ctx.Err() != nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	var last time.Time
	var lat []time.Duration
	for a, at := range outcome {
		if i, ok := all[a]; ok {
			lat = append(lat, at.Sub(idAt(i)))
			if at.After(last) {
				last = at
			}
		}
	}
	res.final = last.Sub(start)
	res.p50, res.p99 = percentile(lat, 0.5), percentile(lat, 0.99)
	// Late duplicates: look again after the relay went quiet.
	res.cpu = settleCPU(r.cpu) - cpu0
	time.Sleep(2 * time.Second)
	delivered, bounced = map[string]int{}, map[string]int{}
	for _, m := range dest.sink.Messages() {
		if m.From == "" {
			for _, a := range bouncedIn(m.Data) {
				bounced[a]++
			}
			continue
		}
		for _, a := range m.Recipients {
			delivered[a]++
		}
	}
	var mu sync.Mutex
	violate := func(format string, args ...any) {
		mu.Lock()
		res.violations = append(res.violations, fmt.Sprintf(format, args...))
		mu.Unlock()
	}
	for a := range all {
		d, b := delivered[a], bounced[a]
		if d > 1 {
			res.deliveredTwice++
		}
		switch smartReply(a) {
		case "5":
			if d != 0 || b != 1 {
				violate("%s (5xx): delivered %d, bounced %d", a, d, b)
			} else {
				res.bounced++
			}
		case "4":
			if d != 1 || b != 0 {
				violate("%s (4xx first): delivered %d, bounced %d", a, d, b)
			} else {
				res.retried++
			}
		default:
			if d != 1 || b != 0 {
				violate("%s: delivered %d, bounced %d", a, d, b)
			}
		}
	}
	return res
}
