package events

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// MaxEventBytes bounds one event's JSON (the stream's max_msg_size is 64 KiB).
const MaxEventBytes = 60 << 10

// Emitter takes events; the daemons and mailfwdctl hold one. A nil
// *Publisher is a valid Emitter that drops everything (events off).
type Emitter interface {
	Emit(ev Event)
	// EmitAll emits evs in order; those that share a subject may be
	// stored together.
	EmitAll(evs []Event)
}

// AsyncJS is what the publisher needs of JetStream.
type AsyncJS interface {
	PublishMsgAsync(m *nats.Msg, opts ...jetstream.PublishOpt) (jetstream.PubAckFuture, error)
	PublishAsyncComplete() <-chan struct{}
}

// PublisherConfig bounds what events may cost the process.
type PublisherConfig struct {
	Source string // "ingress", "worker", "mailfwdctl"; the host name is added
	// MaxPending bounds the publishes waiting for their PubAck (default
	// 4096). It is also the JetStream context's async limit: see NewJS.
	MaxPending int
	// RetryBuffer bounds the stream messages (an event, or the events of
	// one envelope stored together, at most MaxEventBytes) kept for another
	// try after a failed publish, and those gathered while lingering
	// (default 8192). Beyond it a message's events are dropped, counted and
	// logged: mail is never held back for its events.
	RetryBuffer int
	// StallWait is how long Emit may wait for a pending slot before the
	// event goes to the retry buffer (default 5ms).
	StallWait time.Duration
	// Linger, when set, gathers the events emitted within this long (at
	// most MaxBatch of them) and publishes them together: one write to
	// NATS, one server read and one burst of acks for the lot instead of a
	// round of wake-ups per event, which is most of an event's cost. It
	// delays the events by at most Linger; their order is kept. The
	// ingress publishes at once (its received event must be stored before
	// the envelope it precedes); the workers linger.
	Linger time.Duration
	// MaxBatch bounds what Linger gathers (default 256).
	MaxBatch int
	// Types, when set, are the only types published; the others are
	// skipped at once (not encoded, not counted as dropped).
	Types  map[Type]bool
	Logger *slog.Logger
	// Dropped, when set, is called once per dropped event (a metric).
	Dropped func()
}

// NewJS is the JetStream context a Publisher should use: its own async
// publish window, an error handler that gives failed publishes back to p.
func NewJS(nc *nats.Conn, maxPending int, p *Publisher) (jetstream.JetStream, error) {
	if maxPending <= 0 {
		maxPending = 4096
	}
	return jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(maxPending),
		jetstream.WithPublishAsyncTimeout(10*time.Second),
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, m *nats.Msg, err error) {
			p.failed(m, err)
		}))
}

// Publisher publishes events without blocking the mail path: each Emit is
// an async publish; a publish that fails (no PubAck, the stream or NATS
// unavailable) is retried from a bounded buffer with backoff, under the
// same Nats-Msg-Id so a retry that follows a lost PubAck is not a second
// copy. When the buffer is full the event is dropped: counted (Dropped),
// and logged once a second with the count. Mail is never refused or slowed
// beyond StallWait because events are slow.
type Publisher struct {
	cfg   PublisherConfig
	js    AsyncJS
	retry chan *nats.Msg
	done  chan struct{}
	wg    sync.WaitGroup

	// held are the messages in the retry buffer or dropped: nats.go may
	// report one failed publish twice (its error return and, when the
	// connection drops at that moment, the async error handler).
	// The last dropped messages stay in held (a ring bounds them), so a
	// late second report of one is not counted again.
	mu    sync.Mutex
	held  map[*nats.Msg]struct{}
	ring  [1024]*nats.Msg
	ringI int

	dropped  atomic.Uint64
	lastDrop atomic.Int64 // unix nanos of the last drop log line

	// batch holds the events gathered while lingering, in emit order
	// (bmu); one flush publishes at a time (pmu), so batches keep their
	// order. Emit only appends and wakes the linger loop: a publish that
	// stalls (the async window full) never holds up the mail path.
	bmu   sync.Mutex
	batch []*nats.Msg
	timer *time.Timer
	kick  chan struct{}
	pmu   sync.Mutex
	// quit ends the linger loop's flush when Close's time is up.
	quit    context.Context
	quitNow context.CancelFunc
}

// NewPublisher returns a publisher; call SetJS before the first Emit (the
// JetStream context's error handler needs the publisher: NewJS).
func NewPublisher(cfg PublisherConfig) *Publisher {
	if cfg.MaxPending <= 0 {
		cfg.MaxPending = 4096
	}
	if cfg.RetryBuffer <= 0 {
		cfg.RetryBuffer = 8192
	}
	if cfg.StallWait <= 0 {
		cfg.StallWait = 5 * time.Millisecond
	}
	if cfg.MaxBatch <= 0 {
		cfg.MaxBatch = 256
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if host, err := os.Hostname(); err == nil && cfg.Source != "" {
		cfg.Source += "/" + host
	}
	quit, quitNow := context.WithCancel(context.Background())
	return &Publisher{cfg: cfg, retry: make(chan *nats.Msg, cfg.RetryBuffer), done: make(chan struct{}), held: map[*nats.Msg]struct{}{},
		kick: make(chan struct{}, 1), quit: quit, quitNow: quitNow}
}

// Start sets the JetStream context and starts the retry loop.
func (p *Publisher) Start(js AsyncJS) {
	p.js = js
	p.wg.Add(1)
	go p.retryLoop()
	if p.cfg.Linger > 0 {
		p.wg.Add(1)
		go p.lingerLoop()
	}
}

// lingerLoop publishes the gathered events when the linger ends or a batch
// is full.
func (p *Publisher) lingerLoop() {
	defer p.wg.Done()
	for {
		select {
		case <-p.done:
			return
		case <-p.kick:
			p.flush(p.quit)
		}
	}
}

func (p *Publisher) wake() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// Emit publishes ev (filling Schema, ID, Time and Source when empty).
func (p *Publisher) Emit(ev Event) {
	p.EmitAll([]Event{ev})
}

// EmitAll publishes evs in order (filling Schema, ID, Time and Source when
// empty, in evs itself: pass a slice of fresh events). Consecutive events that share a subject (one envelope's
// recipients with the same change) are stored together, as one stream
// message holding a JSON array of them (at most MaxEventBytes): a stored
// message and its PubAck cost the server and both clients far more than
// an event's bytes. The message's Nats-Msg-Id is its first event's id.
func (p *Publisher) EmitAll(evs []Event) {
	if p == nil || p.js == nil {
		return
	}
	var (
		subject, id string
		parts       [][]byte
		size        int
		last        *Event // the event subj was made for
		subj        string
	)
	for i := range evs {
		ev := &evs[i]
		if p.cfg.Types != nil && !p.cfg.Types[ev.Type] {
			continue
		}
		p.fill(ev)
		data, err := ev.Marshal()
		if err != nil {
			p.cfg.Logger.Error("events: cannot encode an event", "type", ev.Type, "queue_id", ev.QueueID, "err", err)
			continue
		}
		if last == nil || !sameSubject(last, ev) { // an envelope's recipients share it
			subj, last = Subject(ev), ev
		}
		if len(data) > MaxEventBytes {
			p.drop(nats.NewMsg(subj), 1, fmt.Errorf("event of %d bytes exceeds %d", len(data), MaxEventBytes))
			continue
		}
		if len(parts) > 0 && (subj != subject || size+len(data)+1 > MaxEventBytes) {
			p.enqueue(subject, id, parts)
			parts = parts[:0]
		}
		if len(parts) == 0 {
			subject, id, size = subj, ev.ID, 1 // the array's brackets
		}
		parts = append(parts, data)
		size += len(data) + 1
	}
	if len(parts) > 0 {
		p.enqueue(subject, id, parts)
	}
}

// sameSubject reports whether a and b have the same Subject.
func sameSubject(a, b *Event) bool {
	return a.Type == b.Type && a.QueueID == b.QueueID && a.Destination == b.Destination && a.Action == b.Action
}

// fill sets ev's Schema, ID, Time and Source when empty.
func (p *Publisher) fill(ev *Event) {
	if ev.Schema == 0 {
		ev.Schema = Schema
	}
	if ev.ID == "" {
		ev.ID = NewID()
	}
	if ev.Time.IsZero() {
		ev.Time = time.Now().UTC()
	}
	if ev.Source == "" {
		ev.Source = p.cfg.Source
	}
}

// enqueue publishes one stream message of the encoded events parts (all
// for subject): the event itself, or a JSON array of several.
func (p *Publisher) enqueue(subject, id string, parts [][]byte) {
	m := nats.NewMsg(subject)
	if len(parts) == 1 {
		m.Data = parts[0]
	} else {
		m.Data = joinArray(parts)
	}
	m.Header.Set(jetstream.MsgIDHeader, id)
	if p.cfg.Linger <= 0 {
		p.publish(m)
		return
	}
	p.bmu.Lock()
	if len(p.batch) >= p.cfg.RetryBuffer { // the loop cannot publish (NATS stalls)
		p.bmu.Unlock()
		p.drop(m, len(parts), errors.New("events: too many events waiting to be published"))
		return
	}
	p.batch = append(p.batch, m)
	n := len(p.batch)
	if n == 1 {
		if p.timer == nil {
			p.timer = time.AfterFunc(p.cfg.Linger, p.wake)
		} else {
			p.timer.Reset(p.cfg.Linger)
		}
	}
	p.bmu.Unlock()
	if n >= p.cfg.MaxBatch {
		p.wake()
	}
}

// joinArray is the JSON array of the encoded events parts.
func joinArray(parts [][]byte) []byte {
	n := 1
	for _, b := range parts {
		n += len(b) + 1
	}
	out := make([]byte, 0, n)
	out = append(out, '[')
	for i, b := range parts {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, b...)
	}
	return append(out, ']')
}

// Flush publishes the events gathered while lingering now, in order.
func (p *Publisher) Flush() {
	p.flush(context.Background())
}

// flush is Flush until ctx ends; what it has not published by then is
// dropped and counted (NATS stalled: each publish may wait StallWait).
func (p *Publisher) flush(ctx context.Context) {
	if p == nil {
		return
	}
	p.pmu.Lock()
	defer p.pmu.Unlock()
	p.bmu.Lock()
	batch := p.batch
	p.batch = make([]*nats.Msg, 0, min(len(batch), p.cfg.MaxBatch))
	if p.timer != nil {
		p.timer.Stop()
	}
	p.bmu.Unlock()
	for i, m := range batch {
		if ctx.Err() != nil {
			for _, m := range batch[i:] {
				p.drop(m, Count(m.Data), ctx.Err())
			}
			return
		}
		p.publish(m)
	}
}

func (p *Publisher) publish(m *nats.Msg) {
	if _, err := p.js.PublishMsgAsync(m, jetstream.WithStallWait(p.cfg.StallWait)); err != nil {
		p.failed(m, err)
	}
}

// permanent reports errors a retry cannot fix: the server refused this
// event (its size, a bad subject), as opposed to no answer at all.
func permanent(err error) bool {
	var api *jetstream.APIError
	return errors.Is(err, nats.ErrBadSubject) || errors.Is(err, nats.ErrMaxPayload) || errors.Is(err, nats.ErrInvalidMsg) ||
		(errors.As(err, &api) && api.Code != 503)
}

// failed keeps m for another try, or drops it when the buffer is full or
// the server refused it.
func (p *Publisher) failed(m *nats.Msg, err error) {
	if permanent(err) {
		p.drop(m, Count(m.Data), err)
		return
	}
	p.mu.Lock()
	_, dup := p.held[m]
	p.held[m] = struct{}{}
	p.mu.Unlock()
	if dup {
		return // the same failure reported twice
	}
	select {
	case <-p.done:
		p.drop(m, Count(m.Data), err)
		return
	default:
	}
	select {
	case p.retry <- m:
	default:
		p.drop(m, Count(m.Data), err)
	}
}

// drop gives up m, which holds n events.
func (p *Publisher) drop(m *nats.Msg, n int, err error) {
	p.mu.Lock()
	if old := p.ring[p.ringI]; old != nil {
		delete(p.held, old)
	}
	p.ring[p.ringI] = m
	p.ringI = (p.ringI + 1) % len(p.ring)
	p.mu.Unlock()
	total := p.dropped.Add(uint64(n))
	if p.cfg.Dropped != nil {
		for range n {
			p.cfg.Dropped()
		}
	}
	now := time.Now().UnixNano()
	if last := p.lastDrop.Load(); now-last >= int64(time.Second) && p.lastDrop.CompareAndSwap(last, now) {
		p.cfg.Logger.Warn("events: the event stream is not taking events; dropping them (mail is not affected)",
			"subject", m.Subject, "dropped_total", total, "err", err)
	}
}

// retryLoop republishes failed events, backing off while they keep failing.
func (p *Publisher) retryLoop() {
	defer p.wg.Done()
	wait := 50 * time.Millisecond
	for {
		select {
		case <-p.done:
			return
		case m := <-p.retry:
			p.mu.Lock()
			delete(p.held, m)
			p.mu.Unlock()
			if _, err := p.js.PublishMsgAsync(m, jetstream.WithStallWait(time.Second)); err != nil {
				p.failed(m, err)
				select {
				case <-p.done:
					return
				case <-time.After(wait):
				}
				wait = min(2*wait, 5*time.Second)
				continue
			}
			wait = 50 * time.Millisecond
		}
	}
}

// Dropped is how many events were given up.
func (p *Publisher) Dropped() uint64 {
	if p == nil {
		return 0
	}
	return p.dropped.Load()
}

// Close waits until ctx ends for the pending publishes and the retry buffer
// to empty, then stops. What is still unpublished is dropped and counted.
func (p *Publisher) Close(ctx context.Context) {
	if p == nil || p.js == nil {
		return
	}
	// The linger loop's flush in progress ends with ctx too (quit).
	stop := context.AfterFunc(ctx, p.quitNow)
	defer stop()
	p.flush(ctx)
	for {
		select {
		case <-p.js.PublishAsyncComplete():
			if len(p.retry) == 0 {
				close(p.done)
				p.wg.Wait()
				return
			}
		case <-ctx.Done():
			close(p.done)
			p.wg.Wait()
			for {
				select {
				case m := <-p.retry:
					p.drop(m, Count(m.Data), ctx.Err())
				default:
					return
				}
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(20 * time.Millisecond):
		}
	}
}
