package queue

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Headers of a message parked in the migration stream.
const (
	hdrMigrateSubject = "Mailfwd-Migrate-Subject"
	hdrMigrateSeq     = "Mailfwd-Migrate-Seq"
)

// migrateStream is where Migrate parks the queue while stream Stream is
// made again, and migrateFence the subject the old stream takes meanwhile
// (so nothing is published into it while it is copied).
func (q *Queue) migrateStream() string { return q.cfg.Stream + "_MIGRATE" }
func (q *Queue) migrateFence() string  { return "mailfwd.migrate.fence." + q.cfg.Stream }
func (q *Queue) migratePrefix() string { return "mailfwd.migrate.parked." + q.cfg.Stream }

// Migrate moves the queue out of a stream that lets publishers remove or
// multiply mail (one made by a release before the deferrals consumer:
// schedules on, which nats-server can never turn off again) into a stream
// as Bootstrap makes it, then runs Bootstrap. Nothing is lost on the way,
// and a Migrate stopped anywhere (a crash, a timeout) is finished by
// running it again:
//
//  1. the old stream's consumers are deleted and its subjects moved to a
//     fence subject: the ingress's publishes find no stream (it answers
//     4xx, the clients retry) and the workers fetch nothing;
//  2. every message is copied, in order, to stream <Stream>_MIGRATE
//     (its subject and sequence in headers; a run that stopped resumes
//     after the last one copied), and only then is the old stream deleted;
//  3. Bootstrap makes the new stream and consumers;
//  4. every parked message is published to its old subject (a deferred
//     envelope as a plain message: its NextAttempt says when it is due)
//     and then deleted from the parking stream, which goes last.
//
// A schedule of the old stream that fires while it is copied can leave both
// its deferred and its ready copy: a duplicate delivery, never a loss.
// Stop the ingress and workers first to avoid that. Without an unsafe
// stream or a parking stream, Migrate is Bootstrap.
func (q *Queue) Migrate(ctx context.Context, log io.Writer) error {
	parked, err := q.js.Stream(ctx, q.migrateStream())
	if err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("queue: migrate: stream %s: %w", q.migrateStream(), err)
	}
	old, err := q.js.Stream(ctx, q.cfg.Stream)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
	case err != nil:
		return fmt.Errorf("queue: migrate: stream %s: %w", q.cfg.Stream, err)
	case len(checkStreamSafe(old.CachedInfo().Config)) > 0:
		if parked, err = q.parkAll(ctx, old, parked, log); err != nil {
			return err
		}
	}
	if err := q.Bootstrap(ctx); err != nil {
		return err
	}
	if parked == nil {
		fmt.Fprintf(log, "queue: stream %s needs no migration\n", q.cfg.Stream)
		return nil
	}
	return q.unpark(ctx, parked, log)
}

// parkAll fences the old stream, copies all of it into the parking stream
// and deletes it (steps 1 and 2 of Migrate).
func (q *Queue) parkAll(ctx context.Context, old, parked jetstream.Stream, log io.Writer) (jetstream.Stream, error) {
	name := q.cfg.Stream
	for cons := range old.ListConsumers(ctx).Info() {
		if err := old.DeleteConsumer(ctx, cons.Name); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
			return nil, fmt.Errorf("queue: migrate: delete consumer %s: %w", cons.Name, err)
		}
	}
	if c := old.CachedInfo().Config; len(c.Subjects) != 1 || c.Subjects[0] != q.migrateFence() {
		c.Subjects = []string{q.migrateFence()}
		if _, err := q.js.UpdateStream(ctx, c); err != nil {
			return nil, fmt.Errorf("queue: migrate: fence stream %s: %w", name, err)
		}
		fmt.Fprintf(log, "queue: stream %s takes no new mail while it is migrated\n", name)
	}
	if parked == nil {
		var err error
		parked, err = q.js.CreateStream(ctx, jetstream.StreamConfig{
			Name: q.migrateStream(), Description: "mailfwd: the queue parked while stream " + name + " is made again",
			Subjects: []string{q.migratePrefix() + ".>"}, Storage: jetstream.FileStorage, Replicas: q.cfg.Replicas,
			Retention: jetstream.LimitsPolicy, DenyPurge: true,
		})
		if err != nil {
			return nil, fmt.Errorf("queue: migrate: create %s: %w", q.migrateStream(), err)
		}
	}
	// Resume after the last message copied by an earlier run.
	next := uint64(1)
	if last, err := parked.GetLastMsgForSubject(ctx, q.migratePrefix()+".>"); err == nil {
		n, perr := strconv.ParseUint(last.Header.Get(hdrMigrateSeq), 10, 64)
		if perr != nil {
			return nil, fmt.Errorf("queue: migrate: parked message %d has no sequence: %w", last.Sequence, perr)
		}
		next = n + 1
	} else if !errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, fmt.Errorf("queue: migrate: read %s: %w", q.migrateStream(), err)
	}
	copied := 0
	for {
		raw, err := old.GetMsg(ctx, next, jetstream.WithGetMsgSubject(">"))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("queue: migrate: read %s from %d: %w", name, next, err)
		}
		seq := strconv.FormatUint(raw.Sequence, 10)
		m := nats.NewMsg(q.migratePrefix() + "." + seq)
		m.Data = raw.Data
		copyOwnHeaders(m.Header, raw.Header)
		m.Header.Set(hdrMigrateSubject, raw.Subject)
		m.Header.Set(hdrMigrateSeq, seq)
		if _, err := q.js.PublishMsg(ctx, m, jetstream.WithMsgID("park."+seq)); err != nil {
			return nil, fmt.Errorf("queue: migrate: park message %d: %w", raw.Sequence, err)
		}
		copied++
		next = raw.Sequence + 1
	}
	if err := q.durable(ctx); err != nil {
		return nil, err
	}
	// Emptied before it is deleted: nats-server removes a deleted stream's
	// files behind its answer, and a stream of the same name made at once
	// (by Bootstrap, next) can load them again.
	if err := emptyStream(ctx, old); err != nil {
		return nil, fmt.Errorf("queue: migrate: empty the old stream %s: %w", name, err)
	}
	if err := q.js.DeleteStream(ctx, name); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, fmt.Errorf("queue: migrate: delete the old stream %s: %w", name, err)
	}
	fmt.Fprintf(log, "queue: %d messages parked in %s; the old stream %s is deleted\n", copied, q.migrateStream(), name)
	return parked, nil
}

// unpark publishes every parked message to its subject in the new stream,
// deleting each from the parking stream after its PubAck, then the parking
// stream itself (step 4 of Migrate).
func (q *Queue) unpark(ctx context.Context, parked jetstream.Stream, log io.Writer) error {
	moved := 0
	for {
		raw, err := parked.GetMsg(ctx, 1, jetstream.WithGetMsgSubject(">"))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if err != nil {
			return fmt.Errorf("queue: migrate: read %s: %w", q.migrateStream(), err)
		}
		subj, seq := raw.Header.Get(hdrMigrateSubject), raw.Header.Get(hdrMigrateSeq)
		if subj == "" || !strings.HasPrefix(subj, "mail.") {
			return fmt.Errorf("queue: migrate: parked message %d has subject %q; remove it by hand (nats stream rmm %s %d) if it is not mail",
				raw.Sequence, subj, q.migrateStream(), raw.Sequence)
		}
		m := nats.NewMsg(subj)
		m.Data = raw.Data
		copyOwnHeaders(m.Header, raw.Header)
		m.Header.Del(hdrMigrateSubject)
		m.Header.Del(hdrMigrateSeq)
		if _, err := q.js.PublishMsg(ctx, m, jetstream.WithMsgID("migrated."+seq)); err != nil {
			return fmt.Errorf("queue: migrate: queue parked message %s on %s: %w", seq, subj, err)
		}
		if err := q.durable(ctx); err != nil {
			return err
		}
		if err := parked.DeleteMsg(ctx, raw.Sequence); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
			return fmt.Errorf("queue: migrate: unpark message %d: %w", raw.Sequence, err)
		}
		moved++
	}
	if err := q.js.DeleteStream(ctx, q.migrateStream()); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("queue: migrate: delete %s: %w", q.migrateStream(), err)
	}
	fmt.Fprintf(log, "queue: %d messages queued again in stream %s; migration done\n", moved, q.cfg.Stream)
	return nil
}

// emptyStream removes every message of st: a purge, or, where the stream
// denies purges, one delete per message.
func emptyStream(ctx context.Context, st jetstream.Stream) error {
	if err := st.Purge(ctx); err == nil {
		return nil
	}
	info, err := st.Info(ctx)
	if err != nil {
		return err
	}
	for seq := info.State.FirstSeq; seq > 0 && seq <= info.State.LastSeq; seq++ {
		if err := st.DeleteMsg(ctx, seq); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
			return err
		}
	}
	return nil
}

// copyOwnHeaders copies src's headers except NATS's own (schedules, roll-ups,
// message ids, TTLs…): trace context and the like.
func copyOwnHeaders(dst, src nats.Header) {
	for k, vs := range src {
		if !strings.HasPrefix(k, "Nats-") {
			dst[k] = vs
		}
	}
}
