package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// A lease lets one process of the fleet do a job that must run once (the
// queue metrics): an entry of the refs bucket under a settings key (which
// the orphan sweeper skips, and which every worker may already write),
// taken and renewed by compare-and-set on its revision. A holder that dies
// stops renewing; another process takes the lease once it has run out.
type lease struct {
	Holder string    `json:"holder"`
	Until  time.Time `json:"until"`
}

func leaseKey(name string) string { return settingsKeyPrefix + "lease." + name }

// TryLease takes or renews lease name for holder until ttl from now. It
// reports whether holder has it. Two callers racing for a free or expired
// lease cannot both win: each writes on the revision it read.
func (q *Queue) TryLease(ctx context.Context, name, holder string, ttl time.Duration) (bool, error) {
	kv, err := q.js.KeyValue(ctx, q.cfg.RefsBucket)
	if err != nil {
		return false, fmt.Errorf("queue: kv %s: %w", q.cfg.RefsBucket, err)
	}
	now := time.Now()
	val, err := json.Marshal(lease{Holder: holder, Until: now.Add(ttl).UTC()})
	if err != nil {
		return false, err
	}
	key := leaseKey(name)
	ent, err := kv.Get(ctx, key)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		if _, err := kv.Create(ctx, key, val); err != nil {
			if errors.Is(err, jetstream.ErrKeyExists) {
				return false, nil // another took it first
			}
			return false, fmt.Errorf("queue: lease %s: %w", name, err)
		}
		return true, nil
	case err != nil:
		return false, fmt.Errorf("queue: lease %s: %w", name, err)
	}
	var cur lease
	if err := json.Unmarshal(ent.Value(), &cur); err == nil && cur.Holder != holder && now.Before(cur.Until) {
		return false, nil // held by another, still valid
	}
	if _, err := kv.Update(ctx, key, val, ent.Revision()); err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) {
			return false, nil // someone else wrote first
		}
		return false, fmt.Errorf("queue: lease %s: %w", name, err)
	}
	return true, nil
}

// DropLease gives lease name up if holder has it (a clean shutdown), so
// another process takes over without waiting for it to run out.
func (q *Queue) DropLease(ctx context.Context, name, holder string) error {
	kv, err := q.js.KeyValue(ctx, q.cfg.RefsBucket)
	if err != nil {
		return fmt.Errorf("queue: kv %s: %w", q.cfg.RefsBucket, err)
	}
	ent, err := kv.Get(ctx, leaseKey(name))
	if err != nil {
		return nil
	}
	var cur lease
	if json.Unmarshal(ent.Value(), &cur) != nil || cur.Holder != holder {
		return nil
	}
	return kv.Delete(ctx, leaseKey(name), jetstream.LastRevision(ent.Revision()))
}
