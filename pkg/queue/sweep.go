package queue

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// BodyStore is what the orphan sweeper needs of the body store
// (blob.Store has these methods).
type BodyStore interface {
	List(ctx context.Context, fn func(key string, modified time.Time) error) error
	Delete(ctx context.Context, key string) error
}

// Orphan kinds.
const (
	OrphanBody = "body" // a stored body no envelope refers to
	OrphanRefs = "refs" // a body-refs entry of a message without envelopes
)

// Orphan is a body or refs entry that no envelope in the stream refers to:
// what an accept that failed without a clear answer (or a crash between
// the steps of one) left behind.
type Orphan struct {
	Kind  string    `json:"kind"`
	Key   string    `json:"key"`
	Since time.Time `json:"since"` // stored at
}

// settingsKeyPrefix marks entries of the refs bucket that are not refs
// (what the workers announce, e.g. their queue-return time).
const settingsKeyPrefix = "_"

// Orphans lists bodies and refs entries older than minAge that no envelope
// in the stream (in any state: ready, deferred, held, failed…) refers to.
// minAge must exceed the longest accept (body stored, then envelopes
// published): a younger body may belong to an accept still in progress.
//
// The stream is read in sequence order up to its live end. Every operation
// that moves an envelope (defer, deferred made ready, hold, requeue) stores the
// new copy before it removes the old one, so a read in ascending order
// meets at least one copy of every envelope that exists throughout.
func (q *Queue) Orphans(ctx context.Context, bodies BodyStore, minAge time.Duration) ([]Orphan, error) {
	if minAge <= 0 {
		return nil, errors.New("queue: orphans: the minimum age must be positive")
	}
	cutoff := time.Now().Add(-minAge)
	// Candidates first, the live set after: whatever refers to a candidate
	// is then certainly seen (a young accept's body is no candidate).
	var cands []Orphan
	if bodies != nil {
		err := bodies.List(ctx, func(key string, mod time.Time) error {
			if mod.Before(cutoff) {
				cands = append(cands, Orphan{Kind: OrphanBody, Key: key, Since: mod})
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("queue: orphans: list bodies: %w", err)
		}
	}
	kv, err := q.js.KeyValue(ctx, q.cfg.RefsBucket)
	if err != nil {
		return nil, fmt.Errorf("queue: kv %s: %w", q.cfg.RefsBucket, err)
	}
	lister, err := kv.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("queue: orphans: list refs: %w", err)
	}
	for k := range lister.Keys() {
		if strings.HasPrefix(k, settingsKeyPrefix) {
			continue
		}
		ent, err := kv.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("queue: orphans: refs %s: %w", k, err)
		}
		if ent.Created().Before(cutoff) {
			cands = append(cands, Orphan{Kind: OrphanRefs, Key: k, Since: ent.Created()})
		}
	}
	if len(cands) == 0 {
		return nil, nil
	}
	bodyKeys, qids, err := q.liveReferences(ctx)
	if err != nil {
		return nil, err
	}
	var out []Orphan
	for _, c := range cands {
		switch {
		case c.Kind == OrphanBody && bodyKeys[c.Key]:
		case c.Kind == OrphanRefs && qids[c.Key]:
		default:
			out = append(out, c)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Since.Before(out[j].Since) })
	return out, nil
}

// liveReferences reads every message of the stream and collects the body
// keys and queue ids its envelopes refer to.
func (q *Queue) liveReferences(ctx context.Context) (bodyKeys, qids map[string]bool, err error) {
	bodyKeys, qids = map[string]bool{}, map[string]bool{}
	for seq := uint64(1); ; {
		raw, err := q.leaderGetNext(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return bodyKeys, qids, nil
		}
		if err != nil {
			return nil, nil, fmt.Errorf("queue: orphans: read stream from %d: %w", seq, err)
		}
		seq = raw.Sequence + 1
		var ref struct {
			QueueID string `json:"qid"`
			BodyKey string `json:"body"`
		}
		// Only the JSON: an envelope's raw inline body follows a newline
		// (pkg/envelope); an accept record has none.
		head, _, _ := bytes.Cut(raw.Data, []byte{'\n'})
		if json.Unmarshal(head, &ref) != nil {
			continue
		}
		if ref.BodyKey != "" {
			bodyKeys[ref.BodyKey] = true
		}
		if ref.QueueID != "" {
			qids[ref.QueueID] = true
		}
	}
}

// leaderGetNext reads the first message at or after seq from the stream
// leader. Not a direct get: those are answered by any replica, and a
// lagging one would end the read early and make live bodies look orphaned.
func (q *Queue) leaderGetNext(ctx context.Context, seq uint64) (*jetstream.RawStreamMsg, error) {
	req, _ := json.Marshal(map[string]any{"seq": seq, "next_by_subj": ">"})
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := q.nc.RequestWithContext(rctx, "$JS.API.STREAM.MSG.GET."+q.cfg.Stream, req)
	if err != nil {
		return nil, err
	}
	var r struct {
		Error   *jetstream.APIError `json:"error"`
		Message *struct {
			Subject string    `json:"subject"`
			Seq     uint64    `json:"seq"`
			Data    []byte    `json:"data"`
			Time    time.Time `json:"time"`
		} `json:"message"`
	}
	if err := json.Unmarshal(resp.Data, &r); err != nil {
		return nil, fmt.Errorf("undecodable reply: %w", err)
	}
	if r.Error != nil {
		if r.Error.ErrorCode == jetstream.JSErrCodeMessageNotFound {
			return nil, jetstream.ErrMsgNotFound
		}
		return nil, r.Error
	}
	if r.Message == nil {
		return nil, errors.New("reply without a message")
	}
	return &jetstream.RawStreamMsg{Subject: r.Message.Subject, Sequence: r.Message.Seq, Data: r.Message.Data, Time: r.Message.Time}, nil
}

// RemoveOrphan deletes an orphan found by Orphans.
func (q *Queue) RemoveOrphan(ctx context.Context, bodies BodyStore, o Orphan) error {
	switch o.Kind {
	case OrphanBody:
		if bodies == nil {
			return errors.New("queue: no body store to remove an orphan body from")
		}
		if err := bodies.Delete(ctx, o.Key); err != nil {
			return fmt.Errorf("queue: remove orphan body %s: %w", o.Key, err)
		}
	case OrphanRefs:
		kv, err := q.js.KeyValue(ctx, q.cfg.RefsBucket)
		if err != nil {
			return fmt.Errorf("queue: kv %s: %w", q.cfg.RefsBucket, err)
		}
		// A delete, not a purge: the bucket refuses roll-ups (refsWithoutRollup).
		if err := kv.Delete(ctx, o.Key); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
			return fmt.Errorf("queue: remove orphan refs %s: %w", o.Key, err)
		}
	default:
		return fmt.Errorf("queue: unknown orphan kind %q", o.Kind)
	}
	return nil
}

// Sweeper removes orphans periodically (run by the workers).
type Sweeper struct {
	Queue    *Queue
	Bodies   BodyStore
	Interval time.Duration // between sweeps (jittered by up to a quarter)
	MinAge   time.Duration // see Orphans
	Log      *slog.Logger
	// Removed, when set, counts removals by kind (a metric).
	Removed func(kind string)
}

// Sweep runs one sweep and returns how many orphans it removed.
func (s *Sweeper) Sweep(ctx context.Context) (int, error) {
	orphans, err := s.Queue.Orphans(ctx, s.Bodies, s.MinAge)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, o := range orphans {
		if err := s.Queue.RemoveOrphan(ctx, s.Bodies, o); err != nil {
			return n, err
		}
		n++
		if s.Removed != nil {
			s.Removed(o.Kind)
		}
		if s.Log != nil {
			s.Log.Info("orphan removed", "component", "sweeper", "kind", o.Kind, "key", o.Key, "since", o.Since)
		}
	}
	return n, nil
}

// Run sweeps every Interval until ctx ends. Several workers may sweep at
// once: removals are idempotent.
func (s *Sweeper) Run(ctx context.Context) {
	for {
		wait := s.Interval + rand.N(s.Interval/4+1)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		n, err := s.Sweep(ctx)
		if err != nil && ctx.Err() == nil && s.Log != nil {
			s.Log.Warn("orphan sweep failed; trying again next interval", "component", "sweeper", "err", err, "removed", n)
		}
	}
}

// queueReturnKey holds the workers' --queue-return in the refs bucket, for
// mailfwdctl's deadline arithmetic (queue release --extend).
const queueReturnKey = settingsKeyPrefix + "workers.queue-return"

// AnnounceQueueReturn records the workers' queue-return time (each worker
// at start; the last one to start wins when they disagree).
func (q *Queue) AnnounceQueueReturn(ctx context.Context, d time.Duration) error {
	kv, err := q.js.KeyValue(ctx, q.cfg.RefsBucket)
	if err != nil {
		return fmt.Errorf("queue: kv %s: %w", q.cfg.RefsBucket, err)
	}
	if ent, err := kv.Get(ctx, queueReturnKey); err == nil && string(ent.Value()) == d.String() {
		return nil
	}
	if _, err := kv.Put(ctx, queueReturnKey, []byte(d.String())); err != nil {
		return fmt.Errorf("queue: announce queue-return: %w", err)
	}
	return nil
}

// WorkersQueueReturn returns the queue-return time the workers announced;
// ok is false when none did (no worker started since the bootstrap).
func (q *Queue) WorkersQueueReturn(ctx context.Context) (d time.Duration, ok bool, err error) {
	kv, err := q.js.KeyValue(ctx, q.cfg.RefsBucket)
	if err != nil {
		return 0, false, fmt.Errorf("queue: kv %s: %w", q.cfg.RefsBucket, err)
	}
	ent, err := kv.Get(ctx, queueReturnKey)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("queue: workers' queue-return: %w", err)
	}
	d, err = time.ParseDuration(string(ent.Value()))
	if err != nil || d <= 0 {
		return 0, false, fmt.Errorf("queue: workers' queue-return %q is not a duration", ent.Value())
	}
	return d, true, nil
}
