package ingress

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/mailfwd/mailfwd/pkg/dkim"
	"github.com/mailfwd/mailfwd/pkg/envelope"
	"github.com/mailfwd/mailfwd/pkg/events"
	"github.com/mailfwd/mailfwd/pkg/maillog"
	"github.com/mailfwd/mailfwd/pkg/rewrite"
)

// DefaultMaxInFlightBytes is the default body-buffer budget: 80 MiB, about
// 15 concurrent S3 uploads (5 MiB parts) and any number of small or
// file-store messages; with the Go runtime's soft memory limit set from it
// (see MemoryLimit) the ingress stays near 150 MB however large and many
// the messages are, far inside the chart's 512 Mi.
const DefaultMaxInFlightBytes = 80 << 20

// MemoryLimit is the Go soft memory limit that goes with an in-flight
// budget: the budget's buffers are live heap, and without a limit the
// collector lets the heap grow to twice the live set before it runs.
func MemoryLimit(maxInFlight int64) int64 { return maxInFlight + 48<<20 }

// minPeek is the least the ingress reads of a body before it decides how
// to store it: bodies up to it are stored with one Put of known size.
const minPeek = 64 << 10

var (
	errTooManyHops    = Reject(554, "5.4.6", "Too many hops")
	errNoBufferSpace  = Reject(452, "4.3.1", "Insufficient system storage, try again later")
	errHeaderTooLarge = errors.New("header line too long")
)

// Data streams the body from the client to the store: the first peekLimit
// bytes are read into a buffer; a body that ends within it is inlined or
// stored with one Put, a longer one goes to PutStream. Memory per message is
// bounded by that buffer and the store's own, both counted against
// MaxInFlightBytes. Received: headers are counted on the way (MaxHops).
// With DKIM keys in force the same stream (our Received: first) is teed
// through a signer, whose header buffer is counted too; the signature goes
// into the envelopes, the body is stored as received.
func (ss *session) Data(r io.Reader) (err error) {
	start := time.Now()
	ss.inData.Store(true) // not abandoned, whatever the outcome
	if !ss.s.cfg.RepanicForTests {
		defer func() {
			if p := recover(); p != nil {
				ss.s.log.Error("panic in DATA", "queue_id", ss.qid, "panic", p, "stack", string(debug.Stack()))
				err = reply(fmt.Errorf("panic: %v", p), ss.qid)
			}
		}()
	}
	wire := wireOf(ss.conn.Conn())
	if wire != nil {
		// Until Reset (after go-smtp has read the message to its end, also
		// when it is refused early): the minimum data rate holds for all of it.
		wire.startData()
		defer wire.dataEnded.Store(true)
	}
	if err := ss.checkUser(); err != nil {
		return reply(err, ss.qid)
	}
	in := &bodyReader{r: r, maxHops: ss.s.cfg.MaxHops}

	if len(ss.targets) == 0 {
		// Every recipient was discarded by policy (DISCARD): accept, keep nothing.
		n, err := io.Copy(io.Discard, in)
		if err != nil {
			return ss.inputError(wire, err)
		}
		ss.s.log.Info(ss.qid+": discarded: every recipient matched a DISCARD rule", "queue_id", ss.qid, "size", n)
		ss.s.cfg.Metrics.Message("discarded")
		return ss.queued()
	}

	var received bytes.Buffer
	ss.writeReceived(&received)
	peek := int64(ss.s.peekLimit) + 1 + int64(received.Len())
	// A DKIM signer holds up to the header section (--dkim-max-header-bytes);
	// that counts against the budget too, as the header arrives.
	keys := ss.s.dkimKeys()
	allow, signing := ss.dkimSigning(keys) // dkim.go: whose mail is signed
	var signBytes int64
	if signing {
		signBytes = int64(ss.s.cfg.DKIMMaxHeaderBytes)
		if signBytes <= 0 {
			signBytes = dkim.DefaultMaxHeaderBytes
		}
	}
	// The in-flight budget is taken as the body arrives (an idle DATA
	// holds a small first buffer), within the client's share of it.
	hold := ss.s.newHold(wire)
	defer hold.release()
	// src is what is stored: the client's message, its sender header fields
	// rewritten (genericstable/masquerade entries marked "headers") before
	// DKIM signs it; the header section the rewriter holds counts too.
	var src io.Reader = in
	var rw *rewrite.Reader
	if sr, ok := ss.s.cfg.Policy.(SenderRewriter); ok {
		if fn := sr.HeaderRewrite(); fn != nil {
			rw = rewrite.Senders(&signMeter{r: in, hold: hold, left: rewrite.DefaultMaxHeader + 4096}, 0, fn)
			src = rw
		}
	}
	if signBytes > 0 {
		src = &signMeter{r: src, hold: hold, left: signBytes}
	}
	pb, err := ss.s.readPeek(src, received.Bytes(), int(peek), hold)
	if pb != nil {
		defer pb.free() // nothing refers to it once accept returned
	}
	small := err == nil
	if errors.Is(err, errPeekFull) {
		err = nil
	}
	if err != nil {
		if errors.Is(err, errNoBufferSpace) {
			return ss.budgetSpent(err)
		}
		return ss.inputError(wire, err)
	}
	buf := pb.b
	if small && in.err != nil {
		return ss.inputError(wire, in.err)
	}
	if rw != nil && rw.Result().Fields > 0 {
		ss.s.log.Info(fmt.Sprintf("%s: sender header fields rewritten: %d", ss.qid, rw.Result().Fields), "queue_id", ss.qid)
	}
	// DKIM: the signer sees the message as stored (after our Received:),
	// teed from the same stream; it holds at most the header section.
	var sign *dkim.Signer
	if signBytes > 0 {
		sign = dkim.NewSigner(keys, dkim.Options{MaxHeaderBytes: ss.s.cfg.DKIMMaxHeaderBytes, Allow: allow})
		defer sign.Abort() // after Close it only releases
	}
	var m message
	if small {
		m = message{body: buf, size: int64(len(buf)), in: in, sign: sign}
		if sign != nil {
			if _, err := sign.Write(buf); err != nil {
				ss.s.log.Error("DKIM signing failed; answering 451", "queue_id", ss.qid, "err", err)
				ss.s.cfg.Metrics.Message("tempfail")
				return reply(err, ss.qid)
			}
		}
	} else {
		var rest io.Reader = io.MultiReader(bytes.NewReader(buf), src)
		if sign != nil {
			rest = io.TeeReader(rest, sign)
		}
		m = message{rest: rest, in: in, sign: sign, hold: hold}
	}
	if err := ss.s.accept(ss, &m); err != nil {
		if in.err != nil {
			return ss.inputError(wire, in.err)
		}
		if errors.Is(err, errNoBufferSpace) {
			return ss.budgetSpent(err)
		}
		ss.s.cfg.Metrics.Message("tempfail")
		return reply(err, ss.qid)
	}
	ss.s.cfg.Metrics.Message("accepted")
	ss.s.cfg.Metrics.DataAccepted(start)
	return ss.queued()
}

func (ss *session) queued() error {
	ss.quota.counted() // the message counts on its quotas
	return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "Ok: queued as " + ss.qid}
}

// inputError turns a failure to read the body into the reply: hop and size
// limits are SMTP-level (go-smtp reads on to the final dot); anything else
// (a timeout, a reset, a line too long) ends the session after the reply,
// so the rest of the body is never read as commands.
func (ss *session) inputError(wire *conn, err error) error {
	switch {
	case errors.Is(err, errTooManyHops):
		ss.s.log.Info(ss.qid+": too many hops; refused", "queue_id", ss.qid, "client", ss.client.Addr, "from", ss.from, "max_hops", ss.s.cfg.MaxHops)
		ss.s.cfg.Metrics.Message("rejected")
		ss.s.cfg.Metrics.LimitRefused("hops")
		return reply(errTooManyHops, ss.qid)
	case errors.Is(err, smtp.ErrDataTooLarge):
		ss.s.cfg.Metrics.Message("rejected")
		return smtp.ErrDataTooLarge
	}
	if wire != nil {
		wire.closeAfterReply()
	}
	ss.s.cfg.Metrics.Message("tempfail")
	var ne interface{ Timeout() bool }
	switch {
	case errors.Is(err, smtp.ErrTooLongLine), errors.Is(err, errHeaderTooLarge):
		ss.s.log.Info(ss.qid+": line too long in DATA; closing", "queue_id", ss.qid, "client", ss.client.Addr)
		return reply(smtp.ErrTooLongLine, ss.qid)
	case errors.As(err, &ne) && ne.Timeout() && wire != nil && wire.rateCut.Load():
		ss.s.log.Info(ss.qid+": client sent the message slower than the minimum data rate; closing", "queue_id", ss.qid, "client", ss.client.Addr, "min_data_rate", ss.s.cfg.MinDataRate)
		return &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 4, 2}, Message: ss.s.cfg.Hostname + " Error: timeout exceeded"}
	case errors.As(err, &ne) && ne.Timeout():
		ss.s.log.Info(ss.qid+": timeout reading the message; closing", "queue_id", ss.qid, "client", ss.client.Addr, "timeout", ss.s.cfg.ReadTimeout)
		return &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 4, 2}, Message: ss.s.cfg.Hostname + " Error: timeout exceeded"}
	default:
		ss.s.log.Info(ss.qid+": lost input channel during DATA", "queue_id", ss.qid, "client", ss.client.Addr, "err", err)
		return &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 4, 0}, Message: ss.s.cfg.Hostname + " Error: connection lost"}
	}
}

// budgetSpent answers a message the in-flight budget (or the client's
// share of it) has no room for: 452 4.3.1 once go-smtp has read the rest.
func (ss *session) budgetSpent(err error) error {
	ss.s.log.Warn("in-flight body budget exhausted; answering 452", "queue_id", ss.qid, "client", ss.client.Addr,
		"max_in_flight_bytes", ss.s.cfg.MaxInFlightBytes, "max_in_flight_bytes_per_client", ss.s.cfg.MaxInFlightBytesPerClient, "err", err)
	ss.s.cfg.Metrics.Message("tempfail")
	ss.s.cfg.Metrics.LimitRefused(inFlightLimit(err))
	return reply(errNoBufferSpace, ss.qid)
}

// dataHold is one message's part of the in-flight budget: MaxInFlightBytes
// for all sessions, MaxInFlightBytesPerClient for one client. It grows as
// the body arrives (buffers are taken only as they fill) and is given back
// when the transfer ends.
type dataHold struct {
	s  *Server
	cs *clientState // nil: exempt from the per-client share (ClientLimitExceptions)
	n  int64        // held; guarded by s.mu
}

func (s *Server) newHold(wire *conn) *dataHold {
	h := &dataHold{s: s}
	if wire != nil && !wire.exempt {
		h.cs = wire.cs
	}
	return h
}

// errClientShare: the client holds its whole share already.
var errClientShare = fmt.Errorf("the client's share of the in-flight budget is in use: %w", errNoBufferSpace)

// grow takes n more bytes: at once from the client's share (a client
// waiting for its own sessions would only wait), then from the budget,
// waiting up to StoreTimeout. Its errors wrap errNoBufferSpace.
func (h *dataHold) grow(n int64) error {
	if n <= 0 {
		return nil
	}
	s := h.s
	s.mu.Lock()
	if h.cs != nil {
		if h.cs.inFlight+n > s.cfg.MaxInFlightBytesPerClient {
			s.mu.Unlock()
			return errClientShare
		}
		h.cs.inFlight += n
	}
	s.mu.Unlock()
	if err := s.acquire(n); err != nil {
		s.mu.Lock()
		if h.cs != nil {
			h.cs.inFlight -= n
		}
		s.mu.Unlock()
		return fmt.Errorf("%w: %v", errNoBufferSpace, err)
	}
	s.mu.Lock()
	h.n += n
	s.mu.Unlock()
	return nil
}

func (h *dataHold) release() {
	s := h.s
	s.mu.Lock()
	n := h.n
	h.n = 0
	if h.cs != nil {
		h.cs.inFlight -= n
	}
	s.mu.Unlock()
	if n > 0 {
		s.inFlight.Add(-n)
		s.budget.Release(n)
	}
}

// acquire takes n bytes from the in-flight budget, waiting up to
// StoreTimeout for them.
func (s *Server) acquire(n int64) error {
	if n > s.cfg.MaxInFlightBytes {
		return fmt.Errorf("a message needs %d bytes of buffers, more than --max-in-flight-bytes %d", n, s.cfg.MaxInFlightBytes)
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.cfg.StoreTimeout)
	defer cancel()
	if err := s.budget.Acquire(ctx, n); err != nil {
		return err
	}
	s.inFlight.Add(n)
	return nil
}

// signMeter takes the DKIM signer's header buffer from the budget as the
// message passes (it holds at most the first left bytes).
type signMeter struct {
	r    io.Reader
	hold *dataHold
	left int64
}

func (m *signMeter) Read(p []byte) (int, error) {
	n, err := m.r.Read(p)
	if k := min(int64(n), m.left); k > 0 {
		if gerr := m.hold.grow(k); gerr != nil {
			return 0, gerr
		}
		m.left -= k
	}
	return n, err
}

// The first buffer of a message is small; it is swapped for one of the
// full peek size only when the body outgrows it.
const firstPeekBuf = 16 << 10

// peekBuf is a pooled buffer holding the start of a message.
type peekBuf struct {
	b    []byte
	bp   *[]byte
	pool *sync.Pool
}

func (p *peekBuf) free() { p.pool.Put(p.bp) }

// errPeekFull: readPeek filled its buffer (the body is longer: stream it).
var errPeekFull = errors.New("peek buffer full")

// readPeek reads up to size bytes (prefix, then the body from r) into a
// pooled buffer that grows as they come, each growth taken from hold
// first. It returns nil error when r ended within size (the whole body is
// in the buffer), errPeekFull when the buffer filled, or r's or the
// budget's error.
func (s *Server) readPeek(r io.Reader, prefix []byte, size int, hold *dataHold) (*peekBuf, error) {
	first := min(size, max(firstPeekBuf, len(prefix)+1024))
	if err := hold.grow(int64(first)); err != nil {
		return nil, err
	}
	pb := s.getPeekBuf(first)
	buf := pb.b[:first]
	n := copy(buf, prefix)
	for {
		if n == len(buf) {
			if len(buf) == size {
				pb.b = buf
				return pb, errPeekFull
			}
			if err := hold.grow(int64(size - len(buf))); err != nil {
				pb.b = buf[:n]
				return pb, err
			}
			big := s.getPeekBuf(size)
			copy(big.b, buf[:n])
			pb.free()
			pb, buf = big, big.b[:size]
		}
		k, err := r.Read(buf[n:])
		n += k
		if err == io.EOF {
			pb.b = buf[:n]
			return pb, nil
		}
		if err != nil {
			pb.b = buf[:n]
			return pb, err
		}
	}
}

// getPeekBuf returns a pooled buffer of at least size bytes: the small
// first one, or the full peek size (with room for longer Received:
// headers next time).
func (s *Server) getPeekBuf(size int) *peekBuf {
	pool, capacity := &s.peekBufs, size+1024
	if size <= firstPeekBuf {
		pool, capacity = &s.firstBufs, firstPeekBuf
	}
	bp, _ := pool.Get().(*[]byte)
	if bp == nil || cap(*bp) < size {
		b := make([]byte, capacity)
		bp = &b
	}
	return &peekBuf{b: (*bp)[:size], bp: bp, pool: pool}
}

// InFlightBytes is the part of MaxInFlightBytes in use.
func (s *Server) InFlightBytes() int64 { return s.inFlight.Load() }

// message is a body on its way to the store: whole in body (small), or
// streamed from rest.
type message struct {
	body []byte
	rest io.Reader
	in   *bodyReader
	size int64        // stored bytes (known before storing only when small)
	sign *dkim.Signer // nil: not signed; fed the whole stored message
	hold *dataHold    // the message's part of the in-flight budget (streamed)
}

// bodyReader passes the body through, remembering the first error, and
// scans the header: Received: lines are counted against maxHops and the
// Message-ID is kept. A header line longer than maxHeaderLine is refused
// (RFC 5322 allows 998).
type bodyReader struct {
	r       io.Reader
	err     error
	maxHops int
	hops    int
	msgid   string

	inBody bool
	line   []byte // the current header line, up to maxHeaderLine
	prevID bool   // the previous header line was Message-ID (for folding)

	// outside is when the last Read of r returned (unix nanoseconds), or 0
	// while a Read is waiting for the client: time outside Read is the
	// store's, which the watchdog in stream bounds.
	outside atomic.Int64
}

const maxHeaderLine = 64 << 10

func (b *bodyReader) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	b.outside.Store(0)
	n, err := b.r.Read(p)
	b.outside.Store(time.Now().UnixNano())
	if !b.inBody {
		if serr := b.scan(p[:n]); serr != nil {
			b.err = serr
			return 0, serr
		}
	}
	if err != nil && err != io.EOF {
		b.err = err
	}
	return n, err
}

func (b *bodyReader) scan(p []byte) error {
	for len(p) > 0 && !b.inBody {
		i := bytes.IndexByte(p, '\n')
		chunk := p
		if i >= 0 {
			chunk = p[:i]
		}
		if len(b.line)+len(chunk) > maxHeaderLine {
			return errHeaderTooLarge
		}
		b.line = append(b.line, chunk...)
		if i < 0 {
			return nil
		}
		p = p[i+1:]
		if err := b.headerLine(bytes.TrimSuffix(b.line, []byte("\r"))); err != nil {
			return err
		}
		b.line = b.line[:0]
	}
	return nil
}

func (b *bodyReader) headerLine(l []byte) error {
	switch {
	case len(l) == 0:
		b.inBody, b.line = true, nil
	case l[0] == ' ' || l[0] == '\t':
		if b.prevID && b.msgid == "" {
			b.msgid = strings.TrimSpace(string(l))
		}
	default:
		b.prevID = false
		name, value, _ := bytes.Cut(l, []byte(":"))
		switch {
		case strings.EqualFold(string(bytes.TrimSpace(name)), "received"):
			b.hops++
			if b.hops > b.maxHops {
				return errTooManyHops
			}
		case strings.EqualFold(string(name), "message-id") && b.msgid == "":
			b.msgid, b.prevID = strings.TrimSpace(string(value)), true
		}
	}
	return nil
}

// accept stores the body and publishes the envelopes. nil means durable.
func (s *Server) accept(ss *session, m *message) error {
	ctx, span := s.tracer.Start(context.Background(), "smtp.receive", trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(
			attribute.String("mailfwd.queue_id", ss.qid),
			attribute.Int("mailfwd.recipients", len(ss.rcpts)),
			attribute.String("net.peer.ip", ss.client.Addr.String()),
		))
	defer span.End()
	fail := func(what string, err error) error {
		span.RecordError(err)
		span.SetStatus(codes.Error, what)
		if (m.in == nil || m.in.err == nil) && !errors.Is(err, errNoBufferSpace) { // a client's failure, or the budget, is logged by the session
			s.log.Error(what, "queue_id", ss.qid, "err", err)
		}
		return err
	}

	// Group recipients by domain, keeping the client's order.
	var envs []*envelope.Envelope
	byDomain := map[string]*envelope.Envelope{}
	forwarded := map[*envelope.Envelope]bool{}
	for _, a := range ss.targets {
		e := byDomain[a.ASCII]
		if e == nil {
			e = &envelope.Envelope{
				QueueID: ss.qid, From: ss.from, Domain: a.ASCII, BodyKey: ss.qid,
				EightBit: ss.eightBit, UTF8: ss.utf8,
				ClientAddr: ss.client.Addr.String(), ClientHelo: ss.client.Helo,
			}
			if ss.user != nil {
				e.AuthUser = ss.user.Name
			}
			byDomain[a.ASCII] = e
			envs = append(envs, e)
		}
		e.Recipients = append(e.Recipients, envelope.Recipient{Addr: a.Raw})
		forwarded[e] = forwarded[e] || ss.fwd[a.Raw]
	}
	// The sender each envelope leaves with: genericstable, masquerade, and
	// SRS where aliases or virtusertable forwarded a recipient of it.
	if sr, ok := s.cfg.Policy.(SenderRewriter); ok {
		for _, e := range envs {
			var steps []string
			e.From, steps = sr.EnvelopeSender(ss.from, forwarded[e])
			for _, st := range steps {
				s.log.Info(ss.qid+": "+st, "queue_id", ss.qid, "domain", e.Domain)
			}
		}
	}

	var msgid string
	switch {
	case m.body != nil && len(envs) == 1 && len(m.body) <= s.cfg.InlineBodyMax:
		// Small and for one domain: the body rides in the envelope, stored
		// (and synced, and replicated) by the same JetStream write.
		envs[0].Body, envs[0].BodyKey = m.body, ""
		msgid = m.in.msgid
	case m.body != nil:
		pctx, cancel := context.WithTimeout(ctx, s.cfg.StoreTimeout)
		pctx, pspan := s.tracer.Start(pctx, "blob.put")
		err := s.bodies.Put(pctx, ss.qid, m.body)
		pspan.End()
		cancel()
		if err != nil {
			return fail("body store failed; answering 451", err)
		}
		msgid = m.in.msgid
	default:
		n, err := s.stream(ctx, ss.qid, m)
		if err == nil && m.in.err != nil {
			err = fmt.Errorf("the store took a body whose read failed: %w", m.in.err) // never queue a cut-off message
		}
		if err != nil {
			return fail("body store failed; answering 451", err)
		}
		m.size, msgid = n, m.in.msgid
	}
	var signature string
	if m.sign != nil {
		if err := m.sign.Close(); err != nil {
			return fail("DKIM signing failed; answering 451", err)
		}
		signature = m.sign.Header()
		if signature != "" {
			span.SetAttributes(attribute.String("mailfwd.dkim.domain", m.sign.Domain()))
		} else {
			s.log.Debug(ss.qid+": not DKIM-signed: "+m.sign.Reason(), "queue_id", ss.qid)
		}
	}
	now := time.Now().UTC()
	for _, e := range envs {
		e.Parts, e.Size, e.MsgID, e.Arrived = len(envs), m.size, msgid, now
		e.DKIMSignature = signature
	}
	span.SetAttributes(attribute.Int64("mailfwd.size", m.size))

	// The receipt line comes before the publish: once an envelope is in the
	// queue a worker may deliver it (and log "to=… stat=Sent") at once, and
	// logs are read receipt first. A failed publish is logged after it
	// under the same queue id ("not queued").
	maillog.LogReceived(ctx, s.log, maillog.Received{
		QueueID: ss.qid, From: ss.from, Size: m.size, NRcpts: len(ss.targets), MsgID: msgid,
		Proto: ss.proto(), ClientHelo: ss.client.Helo, ClientAddr: ss.client.Addr.String(),
	})
	// The events go out (asynchronously, on the queue's connection) before
	// the envelopes, so a reader sees "received" before "delivered".
	s.emitAll(envs, events.Event{Type: events.Received, Client: ss.client.Addr.String()})
	qctx, cancel := context.WithTimeout(ctx, s.cfg.StoreTimeout)
	defer cancel()
	qctx, qspan := s.tracer.Start(qctx, "queue.publish", trace.WithSpanKind(trace.SpanKindProducer))
	err := s.queue.Enqueue(qctx, envs)
	qspan.End()
	if err != nil {
		s.emitAll(envs, events.Event{Type: events.NotQueued, DSN: "4.3.0", Reply: "451 4.3.0 queue unavailable; the client sends again"})
		return fail(ss.qid+": not queued: queue publish failed; answering 451", err)
	}
	return nil
}

// emitAll sends one event like ev per recipient of envs.
func (s *Server) emitAll(envs []*envelope.Envelope, ev events.Event) {
	if s.cfg.Events == nil {
		return
	}
	for _, e := range envs {
		evs := make([]events.Event, len(e.Recipients))
		for i, r := range e.Recipients {
			x := ev
			x.QueueID, x.MessageID, x.Sender, x.Recipient, x.Destination = e.QueueID, e.MsgID, e.From, r.Addr, e.Domain
			x.Arrived, x.Size = e.Arrived, e.Size
			evs[i] = x
		}
		s.cfg.Events.EmitAll(evs) // stored together: one stream message per envelope
	}
}

// stream runs PutStream with the store's buffer reserved from the budget.
// The client's pace is bounded per read (ReadTimeout); the store's by a
// watchdog that cancels the upload when it has held the body for
// StoreTimeout without asking for more.
func (s *Server) stream(ctx context.Context, key string, m *message) (int64, error) {
	if err := m.hold.grow(s.storeBuf); err != nil {
		return 0, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan struct{})
	defer close(done)
	go func() {
		tick := time.NewTicker(max(s.cfg.StoreTimeout/8, 10*time.Millisecond))
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case now := <-tick.C:
				if t := m.in.outside.Load(); t != 0 && now.Sub(time.Unix(0, t)) > s.cfg.StoreTimeout {
					cancel()
					return
				}
			}
		}
	}()
	pctx, pspan := s.tracer.Start(ctx, "blob.put_stream")
	defer pspan.End()
	return s.bodies.PutStream(pctx, key, m.rest)
}
