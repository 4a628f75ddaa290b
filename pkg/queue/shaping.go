package queue

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailfwd/mailfwd/pkg/shaping"
)

// shapingBucketConfig is the fleet's shaping state as Bootstrap makes it:
// per-key TTLs (slot leases, rate values and suspensions expire on their
// own), one value per key.
func shapingBucketConfig(replicas int) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:         shaping.BucketName,
		Description:    "mailfwd: fleet-wide destination limits (slot leases, rate state, suspensions)",
		Storage:        jetstream.FileStorage,
		Replicas:       replicas,
		History:        1,
		LimitMarkerTTL: time.Minute,
	}
}

// quotaBucketConfig is the ingress fleet's sender quotas as Bootstrap
// makes it: GCRA values with per-key TTLs (a quota's value expires once
// it means nothing), one value per key.
func quotaBucketConfig(replicas int) jetstream.KeyValueConfig {
	c := shapingBucketConfig(replicas)
	c.Bucket = shaping.QuotaBucketName
	c.Description = "mailfwd: fleet-wide sender quotas of the ingress (rate state per sender domain and AUTH user)"
	return c
}

// ShapingBucket opens the shaping state bucket (made by Bootstrap).
func (q *Queue) ShapingBucket(ctx context.Context) (shaping.Bucket, error) {
	return q.stateBucket(ctx, shaping.BucketName)
}

// QuotaBucket opens the sender quotas' bucket (made by Bootstrap).
func (q *Queue) QuotaBucket(ctx context.Context) (shaping.Bucket, error) {
	return q.stateBucket(ctx, shaping.QuotaBucketName)
}

// LazyShapingBucket is ShapingBucket for a daemon: when the bucket cannot
// be opened now (NATS or JetStream not up yet, not bootstrapped), the
// error says why and the bucket returned opens itself at a later use (at
// most one try per BucketRetry); until then each call fails, and the
// shaper keeps its local shares as when NATS is down.
func (q *Queue) LazyShapingBucket(ctx context.Context) (shaping.Bucket, error) {
	return q.lazyBucket(ctx, shaping.BucketName)
}

// LazyQuotaBucket is QuotaBucket for the ingress, opened later if not now
// (LazyShapingBucket).
func (q *Queue) LazyQuotaBucket(ctx context.Context) (shaping.Bucket, error) {
	return q.lazyBucket(ctx, shaping.QuotaBucketName)
}

// BucketRetry is how often a lazy bucket tries to open.
var BucketRetry = 5 * time.Second

func (q *Queue) lazyBucket(ctx context.Context, name string) (shaping.Bucket, error) {
	b, err := q.stateBucket(ctx, name)
	if err == nil {
		return b, nil
	}
	return &lazyKV{q: q, name: name, next: time.Now().Add(BucketRetry), err: err}, err
}

// lazyKV is a state bucket that could not be opened yet.
type lazyKV struct {
	q    *Queue
	name string
	mu   sync.Mutex
	b    shaping.Bucket
	next time.Time // no try before
	err  error     // the last try's
}

var _ shaping.Bucket = (*lazyKV)(nil)

// open returns the bucket, trying to open it when its time has come.
func (l *lazyKV) open(ctx context.Context) (shaping.Bucket, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.b != nil {
		return l.b, nil
	}
	if time.Now().Before(l.next) {
		return nil, l.err
	}
	b, err := l.q.stateBucket(ctx, l.name)
	if err != nil {
		l.next, l.err = time.Now().Add(BucketRetry), err
		return nil, err
	}
	l.b = b
	if l.q.cfg.Logger != nil {
		l.q.cfg.Logger.Info("state bucket opened; fleet-wide counts in use again", "bucket", l.name)
	}
	return b, nil
}

func (l *lazyKV) Create(ctx context.Context, key string, val []byte, ttl time.Duration) (uint64, error) {
	b, err := l.open(ctx)
	if err != nil {
		return 0, err
	}
	return b.Create(ctx, key, val, ttl)
}

func (l *lazyKV) Swap(ctx context.Context, key string, val []byte, rev uint64, ttl time.Duration) (uint64, error) {
	b, err := l.open(ctx)
	if err != nil {
		return 0, err
	}
	return b.Swap(ctx, key, val, rev, ttl)
}

func (l *lazyKV) Get(ctx context.Context, key string) ([]byte, uint64, error) {
	b, err := l.open(ctx)
	if err != nil {
		return nil, 0, err
	}
	return b.Get(ctx, key)
}

func (l *lazyKV) Delete(ctx context.Context, key string, rev uint64) error {
	b, err := l.open(ctx)
	if err != nil {
		return err
	}
	return b.Delete(ctx, key, rev)
}

func (l *lazyKV) List(ctx context.Context, prefix string) (map[string][]byte, error) {
	b, err := l.open(ctx)
	if err != nil {
		return nil, err
	}
	return b.List(ctx, prefix)
}

// Watch waits for the bucket to open (trying every BucketRetry), then
// watches it.
func (l *lazyKV) Watch(ctx context.Context, prefix string, fn func(key string, val []byte)) error {
	for {
		b, err := l.open(ctx)
		if err == nil {
			return b.Watch(ctx, prefix, fn)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(BucketRetry):
		}
	}
}

func (q *Queue) stateBucket(ctx context.Context, name string) (shaping.Bucket, error) {
	kv, err := q.js.KeyValue(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("queue: kv %s: %w (run mailfwdctl bootstrap)", name, err)
	}
	return &shapingKV{kv: kv, js: q.js, prefix: "$KV." + name + "."}, nil
}

// shapingKV is shaping.Bucket over a JetStream KV bucket. Swap publishes
// to the key's subject itself: the KV Update drops a key's TTL.
type shapingKV struct {
	kv     jetstream.KeyValue
	js     jetstream.JetStream
	prefix string
}

var _ shaping.Bucket = (*shapingKV)(nil)

// ttlOf rounds a TTL up to whole seconds (the server's unit), at least 1s.
func ttlOf(d time.Duration) time.Duration {
	return max(((d+time.Second-1)/time.Second)*time.Second, time.Second)
}

func casLost(err error) bool {
	var api *jetstream.APIError
	return errors.Is(err, jetstream.ErrKeyExists) || (errors.As(err, &api) &&
		(api.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || api.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant))
}

func (b *shapingKV) Create(ctx context.Context, key string, val []byte, ttl time.Duration) (uint64, error) {
	rev, err := b.kv.Create(ctx, key, val, jetstream.KeyTTL(ttlOf(ttl)))
	if casLost(err) {
		return 0, shaping.ErrExists
	}
	return rev, err
}

func (b *shapingKV) Swap(ctx context.Context, key string, val []byte, rev uint64, ttl time.Duration) (uint64, error) {
	ack, err := b.js.PublishMsg(ctx, &nats.Msg{Subject: b.prefix + key, Data: val},
		jetstream.WithExpectLastSequencePerSubject(rev), jetstream.WithMsgTTL(ttlOf(ttl)))
	if casLost(err) {
		return 0, shaping.ErrChanged
	}
	if err != nil {
		return 0, err
	}
	return ack.Sequence, nil
}

func (b *shapingKV) Get(ctx context.Context, key string) ([]byte, uint64, error) {
	e, err := b.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return nil, 0, shaping.ErrNotFound
	}
	if err != nil {
		return nil, 0, err
	}
	return e.Value(), e.Revision(), nil
}

func (b *shapingKV) Delete(ctx context.Context, key string, rev uint64) error {
	var opts []jetstream.KVDeleteOpt
	if rev > 0 {
		opts = append(opts, jetstream.LastRevision(rev))
	}
	err := b.kv.Delete(ctx, key, opts...)
	if casLost(err) {
		return shaping.ErrChanged
	}
	return err
}

func (b *shapingKV) List(ctx context.Context, prefix string) (map[string][]byte, error) {
	filter := ">"
	if prefix != "" {
		filter = prefix + ">"
	}
	kl, err := b.kv.ListKeysFiltered(ctx, filter)
	if err != nil {
		return nil, err
	}
	out := map[string][]byte{}
	for k := range kl.Keys() {
		if v, _, err := b.Get(ctx, k); err == nil {
			out[k] = v
		}
	}
	if errors.Is(err, jetstream.ErrNoKeysFound) {
		return out, nil
	}
	return out, nil
}

func (b *shapingKV) Watch(ctx context.Context, prefix string, fn func(key string, val []byte)) error {
	w, err := b.kv.Watch(ctx, prefix+">")
	if err != nil {
		return err
	}
	defer func() { _ = w.Stop() }()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case e, ok := <-w.Updates():
			if !ok {
				return errors.New("queue: shaping watch ended")
			}
			if e == nil {
				continue // the initial values are all in
			}
			if e.Operation() != jetstream.KeyValuePut {
				fn(e.Key(), nil)
				continue
			}
			fn(e.Key(), e.Value())
		}
	}
}
