package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailfwd/mailfwd/pkg/address"
	"github.com/mailfwd/mailfwd/pkg/envelope"
)

// State is where an envelope is in its life.
type State string

// States.
const (
	StateReady    State = "ready"    // due now: in the workers' consumer
	StateDeferred State = "deferred" // waiting for its retry time
	StateHeld     State = "held"     // moved aside by an operator's hold
	StateFailed   State = "failed"   // terminal: handling failed too often (see Fail)
)

// AllStates in display order.
var AllStates = []State{StateReady, StateDeferred, StateHeld, StateFailed}

func (s State) prefix() string {
	switch s {
	case StateDeferred:
		return DeferredPrefix
	case StateHeld:
		return HeldPrefix
	case StateFailed:
		return FailedPrefix
	}
	return ReadyPrefix
}

// Entry is one envelope read from the stream (not consumed).
type Entry struct {
	State   State
	Subject string
	Seq     uint64
	Stored  time.Time // when this copy entered the stream
	Env     *envelope.Envelope
	Err     error // the payload did not decode
}

// Domain returns the recipient domain encoded in the subject.
func (e Entry) Domain() string {
	if e.Env != nil {
		return e.Env.Domain
	}
	return domainOfSubject(e.State, e.Subject)
}

func domainOfSubject(st State, subject string) string {
	rest := strings.TrimPrefix(subject, st.prefix()+".")
	if st != StateReady {
		if i := strings.LastIndexByte(rest, '.'); i >= 0 {
			rest = rest[:i]
		}
	}
	if strings.HasPrefix(rest, "_lit.") {
		return rest
	}
	return address.DomainFromToken(rest)
}

// Filter selects envelopes the way sendmail's queue-run options do:
// Domains (recipient domain and its subdomains; selected by subject, without
// reading other mail), Recipients (-qR: substring of a recipient address),
// Senders (-qS: substring of the sender), IDs (-qI: substring of the queue
// id), each with a negated form (-q!R …). Empty lists match everything.
type Filter struct {
	States                    []State
	Domains, NotDomains       []string
	Recipients, NotRecipients []string
	Senders, NotSenders       []string
	IDs, NotIDs               []string
}

// Validate normalises the domains and checks the states.
func (f *Filter) Validate() error {
	for i, d := range f.Domains {
		a, err := address.Domain(d)
		if err != nil {
			return fmt.Errorf("domain %q: %w", d, err)
		}
		f.Domains[i] = a
	}
	for i, d := range f.NotDomains {
		a, err := address.Domain(d)
		if err != nil {
			return fmt.Errorf("domain %q: %w", d, err)
		}
		f.NotDomains[i] = a
	}
	for _, s := range f.States {
		if s != StateReady && s != StateDeferred && s != StateHeld && s != StateFailed {
			return fmt.Errorf("unknown state %q (ready, deferred, held, failed)", s)
		}
	}
	return nil
}

func (f *Filter) states() []State {
	if len(f.States) == 0 {
		return AllStates
	}
	return f.States
}

// subjects are the subject filters to read for state st.
func (f *Filter) subjects(st State) []string {
	p := st.prefix()
	if len(f.Domains) == 0 {
		return []string{p + ".>"}
	}
	var out []string
	for _, d := range f.Domains {
		tok := address.SubjectToken(d)
		if st == StateReady {
			out = append(out, p+"."+tok)
		}
		out = append(out, p+"."+tok+".>")
	}
	return out
}

func underDomain(d, parent string) bool {
	return d == parent || strings.HasSuffix(d, "."+parent)
}

func containsFold(s, sub string) bool {
	return strings.Contains(strings.ToLower(s), strings.ToLower(sub))
}

func anyMatch(list []string, f func(string) bool) bool {
	for _, x := range list {
		if f(x) {
			return true
		}
	}
	return false
}

// Match reports whether the entry passes every part of the filter.
func (f *Filter) Match(e Entry) bool {
	dom := e.Domain()
	if len(f.Domains) > 0 && !anyMatch(f.Domains, func(d string) bool { return underDomain(dom, d) }) {
		return false
	}
	if anyMatch(f.NotDomains, func(d string) bool { return underDomain(dom, d) }) {
		return false
	}
	if e.Env == nil {
		// Undecodable: only domain filters can say anything about it.
		return len(f.Recipients)+len(f.Senders)+len(f.IDs) == 0
	}
	env := e.Env
	rcptMatch := func(sub string) bool {
		for _, r := range env.Recipients {
			if containsFold(r.Addr, sub) {
				return true
			}
		}
		return false
	}
	if len(f.Recipients) > 0 && !anyMatch(f.Recipients, rcptMatch) {
		return false
	}
	if anyMatch(f.NotRecipients, rcptMatch) {
		return false
	}
	senderMatch := func(sub string) bool { return containsFold(env.From, sub) }
	if len(f.Senders) > 0 && !anyMatch(f.Senders, senderMatch) {
		return false
	}
	if anyMatch(f.NotSenders, senderMatch) {
		return false
	}
	idMatch := func(sub string) bool { return containsFold(env.QueueID, sub) }
	if len(f.IDs) > 0 && !anyMatch(f.IDs, idMatch) {
		return false
	}
	return !anyMatch(f.NotIDs, idMatch)
}

// Scan calls fn for every envelope in the stream that matches f, reading
// only the subjects f selects. It does not consume anything.
func (q *Queue) Scan(ctx context.Context, f Filter, fn func(Entry) error) error {
	if err := f.Validate(); err != nil {
		return err
	}
	st, err := q.js.Stream(ctx, q.cfg.Stream)
	if err != nil {
		return fmt.Errorf("queue: stream %s: %w", q.cfg.Stream, err)
	}
	// Only what was there when the scan started: operations that republish
	// (flush, hold, release) must not meet their own copies again.
	info, err := st.Info(ctx)
	if err != nil {
		return fmt.Errorf("queue: stream info: %w", err)
	}
	last := info.State.LastSeq
	for _, state := range f.states() {
		seen := map[uint64]bool{}
		for _, subj := range f.subjects(state) {
			for seq := uint64(1); ; {
				raw, err := st.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subj))
				if errors.Is(err, jetstream.ErrMsgNotFound) {
					break
				}
				if err != nil {
					return fmt.Errorf("queue: read %s from %d: %w", subj, seq, err)
				}
				if raw.Sequence > last {
					break
				}
				seq = raw.Sequence + 1
				if seen[raw.Sequence] {
					continue
				}
				seen[raw.Sequence] = true
				e := Entry{State: state, Subject: raw.Subject, Seq: raw.Sequence, Stored: raw.Time}
				e.Env, e.Err = envelope.Unmarshal(raw.Data)
				if !f.Match(e) {
					continue
				}
				if err := fn(e); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// DomainCount is a count of envelopes per state for one domain.
type DomainCount struct {
	Domain string        `json:"domain"`
	Counts map[State]int `json:"counts"`
	Total  int           `json:"total"`
}

// Stats summarises the queue without reading envelopes (subject counts).
type Stats struct {
	Total    int                 `json:"total"`
	ByState  map[State]int       `json:"by_state"`
	Oldest   map[State]time.Time `json:"oldest"`
	ByDomain []DomainCount       `json:"by_domain"`
	Holds    []Hold              `json:"holds"`
	Pending  uint64              `json:"consumer_pending"`     // ready envelopes not yet handed to a worker
	InFlight int                 `json:"consumer_ack_pending"` // handed out, not yet acked
	// Accepting counts accept records (multi-domain messages) not yet fanned
	// out to their domains; their envelopes are in no state (and no scan) yet.
	Accepting int `json:"accept_records"`
	domains   map[string]*DomainCount
}

// Stats counts envelopes by state and domain.
func (q *Queue) Stats(ctx context.Context) (*Stats, error) {
	st, err := q.js.Stream(ctx, q.cfg.Stream)
	if err != nil {
		return nil, fmt.Errorf("queue: stream %s: %w", q.cfg.Stream, err)
	}
	s := &Stats{ByState: map[State]int{}, Oldest: map[State]time.Time{}, domains: map[string]*DomainCount{}}
	for _, state := range AllStates {
		info, err := st.Info(ctx, jetstream.WithSubjectFilter(state.prefix()+".>"))
		if err != nil {
			return nil, fmt.Errorf("queue: stream info: %w", err)
		}
		for subj, n := range info.State.Subjects {
			d := domainOfSubject(state, subj)
			dc := s.domains[d]
			if dc == nil {
				dc = &DomainCount{Domain: d, Counts: map[State]int{}}
				s.domains[d] = dc
			}
			dc.Counts[state] += int(n)
			dc.Total += int(n)
			s.ByState[state] += int(n)
			s.Total += int(n)
		}
		if s.ByState[state] > 0 {
			if raw, err := st.GetMsg(ctx, 1, jetstream.WithGetMsgSubject(state.prefix()+".>")); err == nil {
				s.Oldest[state] = raw.Time
			}
		}
	}
	if info, err := st.Info(ctx, jetstream.WithSubjectFilter(AcceptPrefix+".>")); err == nil {
		for _, n := range info.State.Subjects {
			s.Accepting += int(n)
		}
	}
	for _, dc := range s.domains {
		s.ByDomain = append(s.ByDomain, *dc)
	}
	sort.Slice(s.ByDomain, func(i, j int) bool {
		if s.ByDomain[i].Total != s.ByDomain[j].Total {
			return s.ByDomain[i].Total > s.ByDomain[j].Total
		}
		return s.ByDomain[i].Domain < s.ByDomain[j].Domain
	})
	if c, err := q.js.Consumer(ctx, q.cfg.Stream, q.cfg.Consumer); err == nil {
		if ci, err := c.Info(ctx); err == nil {
			s.Pending, s.InFlight = ci.NumPending, ci.NumAckPending
		}
	}
	s.Holds, err = q.Holds(ctx)
	return s, err
}

// MakeDue makes a deferred envelope due now (sendmail -qR/-qS/-qI): it is
// published as ready and its deferred copy removed. Ready envelopes are due
// already; held ones need a release.
func (q *Queue) MakeDue(ctx context.Context, e Entry) error {
	if e.State != StateDeferred {
		return fmt.Errorf("queue: %s is %s, not deferred", e.Subject, e.State)
	}
	if e.Env == nil {
		return fmt.Errorf("queue: %s: undecodable envelope", e.Subject)
	}
	env := *e.Env
	env.NextAttempt = time.Now()
	return q.Requeue(ctx, e, &env)
}

// Remove deletes one envelope copy from the stream (purge/bounce). A ready
// envelope being delivered at that moment may still be delivered.
func (q *Queue) Remove(ctx context.Context, e Entry) error {
	st, err := q.js.Stream(ctx, q.cfg.Stream)
	if err != nil {
		return fmt.Errorf("queue: stream %s: %w", q.cfg.Stream, err)
	}
	if err := st.DeleteMsg(ctx, e.Seq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
		return fmt.Errorf("queue: delete %s (seq %d): %w", e.Subject, e.Seq, err)
	}
	return nil
}

// Hold is a domain put on hold by an operator.
type Hold struct {
	Domain string    `json:"domain"`
	Since  time.Time `json:"since"`
	Reason string    `json:"reason,omitempty"`
}

func (q *Queue) holds(ctx context.Context) (jetstream.KeyValue, error) {
	kv, err := q.js.KeyValue(ctx, q.cfg.HoldsBucket)
	if err != nil {
		return nil, fmt.Errorf("queue: kv %s: %w (run the bootstrap)", q.cfg.HoldsBucket, err)
	}
	return kv, nil
}

// SetHold puts domain (and its subdomains) on hold.
func (q *Queue) SetHold(ctx context.Context, domain, reason string) (Hold, error) {
	d, err := address.Domain(domain)
	if err != nil {
		return Hold{}, err
	}
	kv, err := q.holds(ctx)
	if err != nil {
		return Hold{}, err
	}
	h := Hold{Domain: d, Since: time.Now().UTC(), Reason: reason}
	if ent, err := kv.Get(ctx, address.SubjectToken(d)); err == nil {
		var old Hold
		if json.Unmarshal(ent.Value(), &old) == nil {
			h.Since = old.Since // holding again keeps the original start
		}
	}
	b, _ := json.Marshal(h)
	if _, err := kv.Put(ctx, address.SubjectToken(d), b); err != nil {
		return Hold{}, fmt.Errorf("queue: hold %s: %w", d, err)
	}
	return h, nil
}

// ClearHold removes the hold on domain; it reports whether there was one.
func (q *Queue) ClearHold(ctx context.Context, domain string) (bool, error) {
	d, err := address.Domain(domain)
	if err != nil {
		return false, err
	}
	kv, err := q.holds(ctx)
	if err != nil {
		return false, err
	}
	if _, err := kv.Get(ctx, address.SubjectToken(d)); errors.Is(err, jetstream.ErrKeyNotFound) {
		return false, nil
	}
	if err := kv.Delete(ctx, address.SubjectToken(d)); err != nil {
		return false, fmt.Errorf("queue: release %s: %w", d, err)
	}
	return true, nil
}

// Holds lists the domains on hold.
func (q *Queue) Holds(ctx context.Context) ([]Hold, error) {
	kv, err := q.holds(ctx)
	if err != nil {
		return nil, err
	}
	lister, err := kv.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("queue: list holds: %w", err)
	}
	var out []Hold
	for k := range lister.Keys() {
		ent, err := kv.Get(ctx, k)
		if err != nil {
			continue
		}
		var h Hold
		if json.Unmarshal(ent.Value(), &h) == nil {
			out = append(out, h)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Domain < out[j].Domain })
	return out, nil
}

// WatchHolds calls fn with the full set of held domains now and after every
// change, until ctx ends. Workers use it to move held mail aside.
func (q *Queue) WatchHolds(ctx context.Context, fn func(map[string]Hold)) error {
	kv, err := q.holds(ctx)
	if err != nil {
		return err
	}
	w, err := kv.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("queue: watch holds: %w", err)
	}
	defer w.Stop()
	set := map[string]Hold{}
	initial := true
	for {
		select {
		case <-ctx.Done():
			return nil
		case ent, ok := <-w.Updates():
			if !ok {
				return errors.New("queue: holds watcher closed")
			}
			if ent == nil {
				initial = false
				fn(clone(set))
				continue
			}
			switch ent.Operation() {
			case jetstream.KeyValuePut:
				var h Hold
				if json.Unmarshal(ent.Value(), &h) == nil {
					set[ent.Key()] = h
				}
			default:
				delete(set, ent.Key())
			}
			if !initial {
				fn(clone(set))
			}
		}
	}
}

func clone(m map[string]Hold) map[string]Hold {
	out := make(map[string]Hold, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// IsHeld reports whether domain is under one of the holds.
func IsHeld(holds map[string]Hold, domain string) bool {
	for _, h := range holds {
		if underDomain(domain, h.Domain) {
			return true
		}
	}
	return false
}

// MoveToHeld parks an envelope on mail.held.<domain>.<qid>. The caller then
// acks (ready) or removes (deferred) the original.
func (q *Queue) MoveToHeld(ctx context.Context, e *envelope.Envelope, dedupe string) error {
	if e.HeldAt.IsZero() {
		e.HeldAt = time.Now().UTC()
	}
	m, err := q.newMsg(ctx, HeldSubject(e.Domain, e.QueueID), e)
	if err != nil {
		return err
	}
	if _, err := q.js.PublishMsg(ctx, m, jetstream.WithMsgID(msgID(e)+".h"+dedupe)); err != nil {
		return fmt.Errorf("queue: hold %s: %w", e.QueueID, err)
	}
	return q.durable(ctx)
}

// Requeue publishes env as ready now (release of a held envelope, or a
// flush of one), then removes the old copy.
func (q *Queue) Requeue(ctx context.Context, old Entry, env *envelope.Envelope) error {
	m, err := q.newMsg(ctx, ReadySubject(env.Domain), env)
	if err != nil {
		return err
	}
	if _, err := q.js.PublishMsg(ctx, m, jetstream.WithMsgID(msgID(env)+".rq"+strconv.FormatUint(old.Seq, 10))); err != nil {
		return fmt.Errorf("queue: requeue %s: %w", env.QueueID, err)
	}
	if err := q.durable(ctx); err != nil {
		return err
	}
	return q.Remove(ctx, old)
}

// Publish queues a message that mailfwd generated itself (a DSN): body
// already stored under env.BodyKey, one envelope.
func (q *Queue) Publish(ctx context.Context, env *envelope.Envelope) error {
	return q.Enqueue(ctx, []*envelope.Envelope{env})
}
