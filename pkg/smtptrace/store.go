package smtptrace

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Bucket is what smtptrace needs of the MAIL_TRACE key-value bucket
// (a jetstream.KeyValue has it; queue.(*Queue).TraceBucket opens one).
type Bucket interface {
	Create(ctx context.Context, key string, value []byte, opts ...jetstream.KVCreateOpt) (uint64, error)
	Get(ctx context.Context, key string) (jetstream.KeyValueEntry, error)
	Delete(ctx context.Context, key string, opts ...jetstream.KVDeleteOpt) error
	ListKeys(ctx context.Context, opts ...jetstream.WatchOpt) (jetstream.KeyLister, error)
	WatchAll(ctx context.Context, opts ...jetstream.WatchOpt) (jetstream.KeyWatcher, error)
}

// ErrExists is returned by Start for an ID already in use.
var ErrExists = errors.New("a trace with this id is running")

// ErrTooMany is returned by Start when max traces are running.
var ErrTooMany = errors.New("too many traces running")

// Store reads and writes trace settings (mailfwdctl trace).
type Store struct{ b Bucket }

// NewStore uses b.
func NewStore(b Bucket) *Store { return &Store{b: b} }

// Start stores s. The key gets a server-side TTL of the trace's remaining
// time, so the setting vanishes by itself; readers check Until as well.
// maxTraces refuses a setting beyond that many running (the daemons honour
// at most their --trace-max-traces anyway).
func (st *Store) Start(ctx context.Context, s Setting, maxTraces int) error {
	if err := s.Validate(); err != nil {
		return err
	}
	running, err := st.List(ctx)
	if err != nil {
		return err
	}
	if maxTraces > 0 && len(running) >= maxTraces {
		return fmt.Errorf("%w: %d of at most %d (stop one with mailfwdctl trace stop ID)", ErrTooMany, len(running), maxTraces)
	}
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	// TTL granularity is a second; round up so the key outlives Until.
	ttl := time.Until(s.Until).Truncate(time.Second) + time.Second
	if _, err := st.b.Create(ctx, s.ID, b, jetstream.KeyTTL(ttl)); err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) {
			return fmt.Errorf("trace %s: %w", s.ID, ErrExists)
		}
		return fmt.Errorf("trace %s: store: %w", s.ID, err)
	}
	return nil
}

// Stop removes the trace id; it reports whether it was running.
func (st *Store) Stop(ctx context.Context, id string) (bool, error) {
	if _, err := st.b.Get(ctx, id); errors.Is(err, jetstream.ErrKeyNotFound) {
		return false, nil
	} else if err != nil {
		return false, fmt.Errorf("trace %s: %w", id, err)
	}
	if err := st.b.Delete(ctx, id); err != nil {
		return false, fmt.Errorf("trace %s: stop: %w", id, err)
	}
	return true, nil
}

// List returns the running traces, oldest first; expired ones are left out
// even if the server has not removed them yet.
func (st *Store) List(ctx context.Context) ([]Setting, error) {
	lister, err := st.b.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("list traces: %w", err)
	}
	now := time.Now()
	var out []Setting
	for k := range lister.Keys() {
		e, err := st.b.Get(ctx, k)
		if err != nil {
			continue // removed since listed
		}
		var s Setting
		if json.Unmarshal(e.Value(), &s) != nil || s.Validate() != nil || !s.Active(now) {
			continue
		}
		out = append(out, s)
	}
	sortSettings(out)
	return out, nil
}

func sortSettings(s []Setting) {
	sort.Slice(s, func(i, j int) bool {
		if !s[i].Created.Equal(s[j].Created) {
			return s[i].Created.Before(s[j].Created)
		}
		return s[i].ID < s[j].ID
	})
}
