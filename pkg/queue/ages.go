package queue

import (
	"context"
	"sort"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/xid"

	"github.com/mailfwd/mailfwd/pkg/envelope"
)

// Oldest-by-arrival without a scan.
//
// A deferral, a hold or a failure rewrites an envelope to the end of the
// stream, so a message's stream time says when it was last moved, not when
// it arrived. Every deferred, held and failed subject ends in the queue id,
// and a queue id is an xid: it carries the second it was assigned (at MAIL
// FROM, at most one SMTP session before the 250). The subject counts that
// Stats reads anyway therefore order those envelopes by arrival; the
// envelopes of the oldestCandidates earliest ids are then read for their
// exact Arrived (exact unless more than that many messages got their ids
// between one message's MAIL FROM and its 250).
// Ready subjects carry no id: the head of each destination's ready line
// (the next one a worker takes) is read instead, for at most
// maxReadyHeads destinations.
const (
	// oldestCandidates is how many of a state's earliest queue ids are read
	// to find the exact oldest arrival (an id is assigned at MAIL FROM, the
	// arrival is the 250; ids that are not xids sort first).
	oldestCandidates = 8
	// maxReadyHeads bounds the reads for the ready state's oldest: the
	// heads of the destinations with the most ready mail.
	maxReadyHeads = 256
)

type subjectCount struct {
	subject, domain string
	n               int
	idTime          time.Time // zero: not known from the subject (ready, or not an xid)
}

// idTime is the time in the queue id that ends a deferred, held or failed
// subject; zero if the subject has none.
func idTime(st State, subject string) time.Time {
	if st == StateReady {
		return time.Time{}
	}
	i := strings.LastIndexByte(subject, '.')
	if i < 0 {
		return time.Time{}
	}
	id, err := xid.FromString(subject[i+1:])
	if err != nil {
		return time.Time{}
	}
	return id.Time()
}

// byArrival orders subjects by the time in their queue id, unknown first
// (they must be read to be placed).
func byArrival(subs []subjectCount) {
	sort.Slice(subs, func(i, j int) bool {
		a, b := subs[i], subs[j]
		if !a.idTime.Equal(b.idTime) {
			return a.idTime.Before(b.idTime)
		}
		return a.subject < b.subject
	})
}

// arrivalOf reads the first envelope on subject and returns when it arrived
// (its stream time if it does not decode or has no arrival).
func arrivalOf(ctx context.Context, st jetstream.Stream, subject string) (time.Time, bool) {
	raw, err := st.GetMsg(ctx, 1, jetstream.WithGetMsgSubject(subject))
	if err != nil {
		return time.Time{}, false
	}
	if e, err := envelope.Unmarshal(raw.Data); err == nil && !e.Arrived.IsZero() {
		return e.Arrived, true
	}
	return raw.Time, true
}

// oldestOf returns the earliest arrival among subs (one state's subjects,
// or one destination's), reading at most oldestCandidates envelopes (ready:
// at most maxReadyHeads heads, the busiest destinations first).
func oldestOf(ctx context.Context, st jetstream.Stream, state State, subs []subjectCount) time.Time {
	var reads []subjectCount
	if state == StateReady {
		reads = append(reads, subs...)
		sort.Slice(reads, func(i, j int) bool { return reads[i].n > reads[j].n })
		reads = reads[:min(len(reads), maxReadyHeads)]
	} else {
		reads = append(reads, subs...)
		byArrival(reads)
		reads = reads[:min(len(reads), oldestCandidates)]
	}
	var oldest time.Time
	for _, s := range reads {
		if t, ok := arrivalOf(ctx, st, s.subject); ok && (oldest.IsZero() || t.Before(oldest)) {
			oldest = t
		}
	}
	return oldest
}
