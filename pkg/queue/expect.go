package queue

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailfwd/mailfwd/pkg/smtptrace"
)

// Expected is the JetStream layout Bootstrap makes for this configuration:
// the one place that says it, read by Bootstrap (to create or update) and
// by Verify (mailfwdctl doctor, to compare).
type Expected struct {
	Stream   jetstream.StreamConfig
	Consumer jetstream.ConsumerConfig
	// AcceptConsumer fans the accept records of multi-domain messages out.
	AcceptConsumer jetstream.ConsumerConfig
	// DeferConsumer hands deferred envelopes to the workers' mover, which
	// makes each ready when it is due (see moveDue).
	DeferConsumer jetstream.ConsumerConfig
	Buckets       []jetstream.KeyValueConfig
}

// DeferMaxPending bounds the deferred envelopes the deferrals consumer
// tracks at once (each waits there with its delay). Beyond it, newer
// deferred envelopes wait in the stream and are moved, past due, as soon as
// slots free: late, never lost.
const DeferMaxPending = 1 << 20

// Expected returns what Bootstrap makes.
func (q *Queue) Expected() Expected {
	return Expected{
		Stream: jetstream.StreamConfig{
			Name:               q.cfg.Stream,
			Description:        "mailfwd envelopes: ready, deferred, held and failed per recipient domain",
			Subjects:           []string{ReadyPrefix + ".>", DeferredPrefix + ".>", HeldPrefix + ".>", FailedPrefix + ".>", AcceptPrefix + ".>"},
			Retention:          jetstream.WorkQueuePolicy,
			Storage:            jetstream.FileStorage,
			Replicas:           q.cfg.Replicas,
			Duplicates:         DedupeWindow(q.cfg.AckWait),
			AllowAtomicPublish: true,
			AllowDirect:        true,
			// Nobody's publish right is a right to remove mail: no roll-up
			// headers, no purge (API or Nats-Schedule-Next), no message
			// TTLs, no schedules (a schedule stream has roll-ups on, and a
			// repeating schedule multiplies mail). See checkStreamSafe.
			DenyPurge:         true,
			AllowRollup:       false,
			AllowMsgSchedules: false,
			AllowMsgTTL:       false,
		},
		Consumer: jetstream.ConsumerConfig{
			Durable:       q.cfg.Consumer,
			Description:   "mailfwd workers: ready envelopes",
			FilterSubject: ReadyPrefix + ".>",
			AckPolicy:     jetstream.AckExplicitPolicy,
			AckWait:       q.cfg.AckWait,
			MaxDeliver:    -1,
			MaxAckPending: q.cfg.MaxAckPending,
			DeliverPolicy: jetstream.DeliverAllPolicy,
		},
		AcceptConsumer: jetstream.ConsumerConfig{
			Durable:       q.cfg.AcceptConsumer,
			Description:   "mailfwd workers: fan accept records out to the ready subjects",
			FilterSubject: AcceptPrefix + ".>",
			AckPolicy:     jetstream.AckExplicitPolicy,
			AckWait:       q.cfg.AckWait,
			MaxDeliver:    -1,
			MaxAckPending: q.cfg.MaxAckPending,
			DeliverPolicy: jetstream.DeliverAllPolicy,
		},
		DeferConsumer: jetstream.ConsumerConfig{
			Durable:       q.cfg.DeferConsumer,
			Description:   "mailfwd workers: make deferred envelopes ready when they are due",
			FilterSubject: DeferredPrefix + ".>",
			AckPolicy:     jetstream.AckExplicitPolicy,
			AckWait:       q.cfg.AckWait,
			MaxDeliver:    -1,
			MaxAckPending: DeferMaxPending,
			DeliverPolicy: jetstream.DeliverAllPolicy,
		},
		Buckets: []jetstream.KeyValueConfig{
			{Bucket: q.cfg.RefsBucket, Description: "mailfwd: recipient domains still pending per multi-domain message",
				Storage: jetstream.FileStorage, Replicas: q.cfg.Replicas},
			{Bucket: q.cfg.HoldsBucket, Description: "mailfwd: recipient domains on hold (mailfwdctl queue hold)",
				Storage: jetstream.FileStorage, Replicas: q.cfg.Replicas, History: 5},
			smtptrace.BucketConfig(q.cfg.Replicas),
			shapingBucketConfig(q.cfg.Replicas),
			quotaBucketConfig(q.cfg.Replicas),
		},
	}
}

// streamDiff lists the settings Bootstrap cares about where have differs
// from want ("replicas 1, want 3").
func streamDiff(have, want jetstream.StreamConfig) []string {
	var d []string
	add := func(ok bool, name string, h, w any) {
		if !ok {
			d = append(d, fmt.Sprintf("%s %v, want %v", name, h, w))
		}
	}
	add(slices.Equal(have.Subjects, want.Subjects), "subjects", have.Subjects, want.Subjects)
	add(have.Retention == want.Retention, "retention", have.Retention, want.Retention)
	add(have.Storage == want.Storage, "storage", have.Storage, want.Storage)
	add(have.Replicas == want.Replicas, "replicas", have.Replicas, want.Replicas)
	add(have.Duplicates == want.Duplicates, "duplicate window", have.Duplicates, want.Duplicates)
	add(have.AllowMsgSchedules == want.AllowMsgSchedules, "allow_msg_schedules", have.AllowMsgSchedules, want.AllowMsgSchedules)
	add(have.AllowAtomicPublish == want.AllowAtomicPublish, "allow_atomic_publish", have.AllowAtomicPublish, want.AllowAtomicPublish)
	add(have.AllowDirect == want.AllowDirect, "allow_direct", have.AllowDirect, want.AllowDirect)
	add(have.AllowRollup == want.AllowRollup, "allow_rollup_hdrs", have.AllowRollup, want.AllowRollup)
	add(have.DenyPurge == want.DenyPurge, "deny_purge", have.DenyPurge, want.DenyPurge)
	add(have.AllowMsgTTL == want.AllowMsgTTL, "allow_msg_ttl", have.AllowMsgTTL, want.AllowMsgTTL)
	return d
}

// checkStreamSafe lists what lets a publisher remove or multiply the mail
// of stream c: every daemon may publish to its subjects, so a roll-up
// header (Nats-Rollup: all empties the stream), a purge (the API, or
// Nats-Schedule-Next: purge), a message TTL or a schedule (a repeating one
// multiplies mail; and nats-server turns roll-ups on for any stream with
// schedules) would make a publish right a right to destroy the queue.
func checkStreamSafe(c jetstream.StreamConfig) []string {
	var bad []string
	if c.AllowMsgSchedules {
		bad = append(bad, "allow_msg_schedules (any publisher can schedule copies, and schedules force roll-ups on)")
	}
	if c.AllowRollup {
		bad = append(bad, "allow_rollup_hdrs (one publish with Nats-Rollup: all empties the stream)")
	}
	if !c.DenyPurge {
		bad = append(bad, "deny_purge off (the queue can be purged)")
	}
	if c.AllowMsgTTL {
		bad = append(bad, "allow_msg_ttl (publishers can set message TTLs)")
	}
	return bad
}

// refsSafe reports whether the refs bucket's stream refuses roll-ups: the
// workers write it, and a roll-up would remove every message's pending
// domains.
func refsSafe(c jetstream.StreamConfig) bool { return !c.AllowRollup }

func consumerDiff(have, want jetstream.ConsumerConfig) []string {
	var d []string
	add := func(ok bool, name string, h, w any) {
		if !ok {
			d = append(d, fmt.Sprintf("%s %v, want %v", name, h, w))
		}
	}
	add(have.FilterSubject == want.FilterSubject, "filter_subject", have.FilterSubject, want.FilterSubject)
	add(have.AckPolicy == want.AckPolicy, "ack_policy", have.AckPolicy, want.AckPolicy)
	add(have.AckWait == want.AckWait, "ack_wait", have.AckWait, want.AckWait)
	add(have.MaxDeliver == want.MaxDeliver, "max_deliver", have.MaxDeliver, want.MaxDeliver)
	add(have.MaxAckPending == want.MaxAckPending, "max_ack_pending", have.MaxAckPending, want.MaxAckPending)
	add(have.DeliverPolicy == want.DeliverPolicy, "deliver_policy", have.DeliverPolicy, want.DeliverPolicy)
	return d
}

func streamConfigured(have, want jetstream.StreamConfig) bool {
	return len(streamDiff(have, want)) == 0
}

func consumerConfigured(have, want jetstream.ConsumerConfig) bool {
	return len(consumerDiff(have, want)) == 0
}

// Layout is the JetStream layout as the server has it now: nil or false
// for what is missing.
type Layout struct {
	Stream   *jetstream.StreamInfo
	Consumer *jetstream.ConsumerInfo
	Buckets  map[string]bool
	Account  *jetstream.AccountInfo
}

// Finding is one part of the layout that is not as Bootstrap makes it.
type Finding struct {
	Kind    string   // stream, consumer, bucket
	Name    string   // MAIL, workers, MAIL_REFS…
	Missing bool     // absent (mail cannot flow)
	Diffs   []string // present but configured differently
	// Unsafe lists settings that let a daemon's publish right remove or
	// multiply mail (checkStreamSafe); bootstrap refuses such a stream.
	Unsafe []string
}

// Verify reads the layout and compares it with Expected, without changing
// anything. An error means JetStream could not be asked at all.
func (q *Queue) Verify(ctx context.Context) (Layout, []Finding, error) {
	x := q.Expected()
	l := Layout{Buckets: map[string]bool{}}
	var out []Finding
	ai, err := q.js.AccountInfo(ctx)
	if err != nil {
		return l, nil, fmt.Errorf("queue: JetStream account info: %w", err)
	}
	l.Account = ai
	st, err := q.js.Stream(ctx, q.cfg.Stream)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		out = append(out, Finding{Kind: "stream", Name: q.cfg.Stream, Missing: true})
	case err != nil:
		return l, nil, fmt.Errorf("queue: stream %s: %w", q.cfg.Stream, err)
	default:
		l.Stream = st.CachedInfo()
		d, bad := streamDiff(l.Stream.Config, x.Stream), checkStreamSafe(l.Stream.Config)
		if len(d) > 0 || len(bad) > 0 {
			out = append(out, Finding{Kind: "stream", Name: q.cfg.Stream, Diffs: d, Unsafe: bad})
		}
		for _, want := range []jetstream.ConsumerConfig{x.Consumer, x.AcceptConsumer, x.DeferConsumer} {
			c, err := q.js.Consumer(ctx, q.cfg.Stream, want.Durable)
			switch {
			case errors.Is(err, jetstream.ErrConsumerNotFound):
				out = append(out, Finding{Kind: "consumer", Name: want.Durable, Missing: true})
			case err != nil:
				return l, nil, fmt.Errorf("queue: consumer %s: %w", want.Durable, err)
			default:
				info := c.CachedInfo()
				if want.Durable == x.Consumer.Durable {
					l.Consumer = info
				}
				if d := consumerDiff(info.Config, want); len(d) > 0 {
					out = append(out, Finding{Kind: "consumer", Name: want.Durable, Diffs: d})
				}
			}
		}
	}
	if l.Stream == nil {
		out = append(out, Finding{Kind: "consumer", Name: q.cfg.Consumer, Missing: true},
			Finding{Kind: "consumer", Name: q.cfg.AcceptConsumer, Missing: true},
			Finding{Kind: "consumer", Name: q.cfg.DeferConsumer, Missing: true})
	}
	for _, b := range x.Buckets {
		_, err := q.js.KeyValue(ctx, b.Bucket)
		switch {
		case errors.Is(err, jetstream.ErrBucketNotFound):
			out = append(out, Finding{Kind: "bucket", Name: b.Bucket, Missing: true})
		case err != nil:
			return l, nil, fmt.Errorf("queue: kv %s: %w", b.Bucket, err)
		default:
			l.Buckets[b.Bucket] = true
			if b.Bucket == q.cfg.RefsBucket {
				if st, err := q.js.Stream(ctx, "KV_"+b.Bucket); err == nil && !refsSafe(st.CachedInfo().Config) {
					out = append(out, Finding{Kind: "bucket", Name: b.Bucket,
						Unsafe: []string{"allow_rollup_hdrs (one roll-up removes every message's pending domains)"}})
				}
			}
		}
	}
	return l, out, nil
}
