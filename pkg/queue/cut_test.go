package queue_test

import (
	"bytes"
	"context"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/propagation"

	"github.com/mailfwd/mailfwd/pkg/envelope"
	"github.com/mailfwd/mailfwd/pkg/queue"
	"github.com/mailfwd/mailfwd/pkg/testenv"
)

// cutProxy forwards NATS connections to target; when armed, it cuts the
// client's connection just before the second envelope publish reaches the
// server (the server gone between two envelopes of one message). marker,
// nth and extra change where: before the nth occurrence of marker, plus
// extra bytes of it.
type cutProxy struct {
	addr   string
	armed  atomic.Bool
	cuts   atomic.Int32
	marker []byte
	nth    int
	extra  int
}

// ingress connects an ingress's queue client through the proxy (the test's
// name, publish wait 6 s) and checks the connection; it closes with the test.
func (px *cutProxy) ingress(t *testing.T, ctx context.Context) *queue.Queue {
	t.Helper()
	return connectChecked(t, ctx, queue.Config{URL: "nats://" + px.addr, ClientName: t.Name(),
		PublishWait: 6 * time.Second, Propagator: propagation.TraceContext{}})
}

func startCutProxy(t *testing.T, target string) *cutProxy {
	t.Helper()
	return startCutProxyAt(t, target, nil, 0, 0)
}

// startCutProxyAt is startCutProxy cutting before the nth marker (+extra bytes).
func startCutProxyAt(t *testing.T, target string, marker []byte, nth, extra int) *cutProxy {
	t.Helper()
	p := &cutProxy{marker: marker, nth: nth, extra: extra}
	p.addr = testenv.ServeTCP(t, func(c net.Conn) {
		defer c.Close()
		s, err := net.Dial("tcp", target)
		if err != nil {
			return
		}
		back := make(chan struct{})
		go func() { defer close(back); _, _ = io.Copy(c, s); c.Close() }()
		p.forward(c, s)
		s.Close()
		c.Close()
		<-back
	}).String()
	return p
}

func (p *cutProxy) forward(c, s net.Conn) {
	marker, nth := []byte("HPUB mail.ready."), 2
	if p.marker != nil {
		marker, nth = p.marker, p.nth
	}
	seen := 0
	buf := make([]byte, 64<<10)
	for {
		n, err := c.Read(buf)
		chunk := buf[:n]
		if p.armed.Load() {
			for off := 0; ; {
				i := bytes.Index(chunk[off:], marker)
				if i < 0 {
					break
				}
				seen++
				if seen == nth {
					_, _ = s.Write(chunk[:min(n, off+i+p.extra)])
					p.armed.Store(false)
					p.cuts.Add(1)
					return
				}
				off += i + len(marker)
			}
		}
		if n > 0 {
			if _, werr := s.Write(chunk); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// The connection to NATS breaks after the first envelope of a message went
// out and before the second: the message is either queued whole (the
// batch sent again after the reconnect) or not at all — never one domain
// of it, which a client retry under a new queue id would deliver again.
// The envelopes are large enough (3 × 400 KB) that they do not fit in one
// accept record, so Enqueue sends them as an atomic batch, one part record
// per envelope (TestEnqueueIsAllOrNothingWhenTheConnectionBreaksMidRecord
// covers the record).
func TestEnqueueIsAllOrNothingWhenTheConnectionBreaksBetweenEnvelopes(t *testing.T) {
	f := setup(t)
	ctx := ctxT(t)
	px := startCutProxyAt(t, f.nats.URL()[len("nats://"):], []byte("HPUB "+queue.AcceptPrefix+"."), 2, 0)
	q := px.ingress(t, ctx)
	envs := newEnvelopes(envelope.NewQueueID(), "a.test", "b.test", "c.test")
	for _, e := range envs {
		bigRecipients(e, 400<<10)
	}
	px.armed.Store(true)
	err := q.Enqueue(ctx, envs)
	if px.cuts.Load() != 1 {
		t.Fatalf("the proxy cut %d connections; want 1", px.cuts.Load())
	}
	// A partial count would show at once; look a few times for a late one.
	st := mailStream(t, ctx, f.js)
	var stored uint64
	for range 3 {
		info, ierr := st.Info(ctx, jetstream.WithSubjectFilter("mail.accept.>"))
		if ierr != nil {
			t.Fatal(ierr)
		}
		stored = info.State.Msgs
		if stored != 0 && stored != 3 {
			break
		}
		time.Sleep(time.Second)
	}
	switch {
	case err == nil && stored == 3:
		t.Logf("queued whole after the reconnect")
	case err != nil && stored == 0:
		t.Logf("refused whole: %v", err)
	default:
		t.Fatalf("enqueue returned %v with %d of 3 envelopes stored", err, stored)
	}
}
