// Command ingressrss measures the ingress's peak memory with many large
// messages in flight at once (issue 9: 100 concurrent 20 MB messages, goal
// ≤ 150 MB RSS), and checks that every message reaches the destination
// byte-exact. The ingress and worker are the release binaries, as separate
// processes (bench/rig), with a real nats-server and, for s3, a real MinIO;
// the destination is an SMTP server on loopback that hashes what it gets.
//
//	go run ./bench/ingressrss                      # file and s3 stores, 100 × 20 MB
//	RSS_STORES=file RSS_SESSIONS=100 RSS_SIZE=20000000 go run ./bench/ingressrss
//
// The peak is the ingress's VmHWM from /proc (Linux). It exits non-zero if
// a message is lost or altered, or if the goal is missed.
package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailfwd/mailfwd/bench/rig"
)

const goalBytes = 150 << 20

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "ingressrss:", err)
		os.Exit(1)
	}
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func run() error {
	sessions := envInt("RSS_SESSIONS", 100)
	size := envInt("RSS_SIZE", 20_000_000)
	stores := []string{"file", "s3"}
	if v := os.Getenv("RSS_STORES"); v != "" {
		stores = strings.Split(v, ",")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	dir, err := os.MkdirTemp("", "mailfwd-ingressrss")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	tools := rig.FindTools()
	if tools.NATSServer == "" {
		return errors.New("nats-server not found (make tools)")
	}
	if err := tools.BuildMailfwd(ctx, dir); err != nil {
		return err
	}
	failed := false
	for _, store := range stores {
		res, err := measure(ctx, tools, filepath.Join(dir, store), store, sessions, size)
		if err != nil {
			return fmt.Errorf("%s: %w", store, err)
		}
		verdict := "goal met"
		if res.peak > goalBytes || res.exact != sessions {
			verdict, failed = "GOAL MISSED", true
		}
		fmt.Printf("store=%-4s sessions=%d size=%d: ingress peak RSS %.1f MB (VmHWM), %d/%d delivered byte-exact, %d tempfailed and retried, %.1fs; %s (≤ %d MB)\n",
			store, sessions, size, float64(res.peak)/(1<<20), res.exact, sessions, res.retries, res.took.Seconds(), verdict, goalBytes>>20)
	}
	if failed {
		return errors.New("goal missed")
	}
	return nil
}

type result struct {
	peak    int64
	exact   int
	retries int
	took    time.Duration
}

func measure(ctx context.Context, tools rig.Tools, dir, store string, sessions, size int) (result, error) {
	var res result
	dest, err := startDest()
	if err != nil {
		return res, err
	}
	defer dest.srv.Close()
	cfg := rig.MailfwdConfig{Dir: dir, Blob: store, Route: dest.addr,
		IngressArgs: []string{"--max-message-size", strconv.Itoa(size + 1<<20), "--max-sessions-per-client", strconv.Itoa(sessions * 2),
			"--max-connections-per-client-per-minute", strconv.Itoa(sessions * 10), "--store-timeout", "2m"}}
	if store == "s3" {
		if tools.Minio == "" {
			return res, errors.New("minio not found (make tools)")
		}
		m, err := rig.StartMinio(tools.Minio, filepath.Join(dir, "minio"))
		if err != nil {
			return res, err
		}
		defer m.Stop(5 * time.Second)
		cfg.Minio = m
	}
	mf, err := rig.StartMailfwd(tools, cfg)
	if err != nil {
		return res, err
	}
	defer mf.Close()
	pid := mf.Ingress.Pid()
	base, _ := vm(pid, "VmRSS")

	start := time.Now()
	want := make([][32]byte, sessions)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var sendErr error
	for i := range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sum, retries, err := send(ctx, mf.SMTPAddr, i, size)
			mu.Lock()
			defer mu.Unlock()
			want[i], res.retries = sum, res.retries+retries
			if err != nil && sendErr == nil {
				sendErr = fmt.Errorf("message %d: %w", i, err)
			}
		}()
	}
	wg.Wait()
	if sendErr != nil {
		return res, sendErr
	}
	deadline := time.Now().Add(10 * time.Minute)
	for dest.count() < sessions {
		if time.Now().After(deadline) {
			return res, fmt.Errorf("only %d of %d messages delivered after 10 minutes", dest.count(), sessions)
		}
		time.Sleep(100 * time.Millisecond)
	}
	res.took = time.Since(start)
	res.peak, err = vm(pid, "VmHWM")
	if err != nil {
		return res, err
	}
	for i := range sessions {
		if got, ok := dest.get("r" + strconv.Itoa(i) + "@rss.test"); ok && got == want[i] {
			res.exact++
		}
	}
	fmt.Printf("store=%s: ingress RSS before the run %.1f MB\n", store, float64(base)/(1<<20))
	return res, nil
}

// vm reads a Vm* field of /proc/pid/status, in bytes.
func vm(pid int, field string) (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}

// body yields message i: headers, then size bytes of lines that differ per
// message, generated as it is read (the client holds none of it).
type body struct {
	i, left int
	line    int
	pending []byte
}

func (b *body) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		if len(b.pending) == 0 {
			if b.left <= 0 {
				if n == 0 {
					return 0, io.EOF
				}
				return n, nil
			}
			if b.line == 0 {
				b.pending = []byte(fmt.Sprintf("From: bench@origin.test\r\nTo: r%d@rss.test\r\nSubject: rss %d\r\nMessage-ID: <rss%d@origin.test>\r\n\r\n", b.i, b.i, b.i))
			} else {
				b.pending = []byte(fmt.Sprintf("%08d %08d .some text to fill the line up to about a hundred bytes, not the same in any two lines\r\n", b.i, b.line))
				if len(b.pending) > b.left {
					b.pending = append(b.pending[:max(b.left-2, 0)], "\r\n"...)
				}
				b.left -= len(b.pending)
			}
			b.line++
		}
		c := copy(p[n:], b.pending)
		b.pending, n = b.pending[c:], n+c
	}
	return n, nil
}

// send submits message i, retrying a 4xx (the in-flight budget's 452), and
// returns the hash of what it sent.
func send(ctx context.Context, addr string, i, size int) ([32]byte, int, error) {
	for try := 0; ; try++ {
		h := sha256.New()
		err := sendOnce(addr, i, io.TeeReader(&body{i: i, left: size}, h))
		var sum [32]byte
		copy(sum[:], h.Sum(nil))
		var se *smtp.SMTPError
		if err == nil || !errors.As(err, &se) || se.Code/100 != 4 || try == 20 || ctx.Err() != nil {
			return sum, try, err
		}
		time.Sleep(time.Second)
	}
}

func sendOnce(addr string, i int, r io.Reader) error {
	c, err := smtp.Dial(addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Hello("client.rss.test"); err != nil {
		return err
	}
	if err := c.Mail("bench@origin.test", nil); err != nil {
		return err
	}
	if err := c.Rcpt("r"+strconv.Itoa(i)+"@rss.test", nil); err != nil {
		return err
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := io.Copy(w, r); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	return c.Quit()
}

// dest is an SMTP destination that keeps, per recipient, the SHA-256 of the
// body after the Received: header(s) the ingress (and worker) put in front.
type dest struct {
	srv  *smtp.Server
	addr string
	mu   sync.Mutex
	sums map[string][32]byte
}

func startDest() (*dest, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	d := &dest{addr: ln.Addr().String(), sums: map[string][32]byte{}}
	d.srv = smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) { return &destSession{d: d}, nil }))
	d.srv.Domain = "dest.rss.test"
	d.srv.MaxMessageBytes = 64 << 20
	d.srv.ReadTimeout, d.srv.WriteTimeout = 5*time.Minute, time.Minute
	go d.srv.Serve(ln)
	return d, nil
}

func (d *dest) count() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.sums)
}

func (d *dest) get(rcpt string) ([32]byte, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	s, ok := d.sums[rcpt]
	return s, ok
}

type destSession struct {
	d     *dest
	rcpts []string
}

func (s *destSession) Reset()                               { s.rcpts = nil }
func (s *destSession) Logout() error                        { return nil }
func (s *destSession) Mail(string, *smtp.MailOptions) error { return nil }
func (s *destSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.rcpts = append(s.rcpts, to)
	return nil
}

func (s *destSession) Data(r io.Reader) error {
	br := bufio.NewReaderSize(r, 64<<10)
	// Skip the trace headers added on the way: Received: and their folds.
	for {
		line, err := br.Peek(10)
		if err != nil && len(line) == 0 {
			return err
		}
		if !strings.EqualFold(string(line[:min(len(line), 9)]), "received:") && line[0] != ' ' && line[0] != '\t' {
			break
		}
		if _, err := br.ReadSlice('\n'); err != nil {
			return err
		}
	}
	h := sha256.New()
	if _, err := io.Copy(h, br); err != nil {
		return err
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	s.d.mu.Lock()
	for _, rc := range s.rcpts {
		s.d.sums[rc] = sum
	}
	s.d.mu.Unlock()
	return nil
}
