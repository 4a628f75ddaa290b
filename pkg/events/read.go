package events

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailfwd/mailfwd/pkg/address"
)

// Filter selects events. Empty lists match everything; within a list any
// entry matches. Types and Domains narrow the stream's subjects (the server
// filters); QueueIDs and Senders are matched here.
type Filter struct {
	QueueIDs []string
	Senders  []string // case-insensitive substring of the sender, as queue list -S
	Domains  []string // recipient domain and its subdomains
	Types    []Type
}

// Validate checks the types and domains.
func (f *Filter) Validate() error {
	for _, t := range f.Types {
		if !slices.Contains(Types, t) {
			return fmt.Errorf("unknown event type %q (one of %s)", t, typeList())
		}
	}
	for i, d := range f.Domains {
		a, err := address.Domain(strings.TrimSuffix(d, "."))
		if err != nil {
			return fmt.Errorf("domain %q: %w", d, err)
		}
		f.Domains[i] = a
	}
	return nil
}

func typeList() string {
	var s []string
	for _, t := range Types {
		s = append(s, string(t))
	}
	return strings.Join(s, ", ")
}

// Subjects are the stream subjects f can match: the server picks the
// events out. Subjects are mailfwd.events.<type>.<queue id>.<destination>;
// without a queue id the older form mailfwd.events.<type>.<destination>
// (events published before the queue id was in the subject) is matched
// too. When the two forms' filters could match one subject (a domain whose
// reversed labels repeat, like com.com), which a consumer refuses, the
// filter widens to the types and Match does the rest.
func (f *Filter) Subjects() []string {
	types := []string{"*"}
	if len(f.Types) > 0 {
		types = nil
		for _, t := range f.Types {
			types = append(types, token(string(t)))
		}
	}
	qids := []string{"*"}
	if len(f.QueueIDs) > 0 {
		qids = nil
		for _, q := range f.QueueIDs {
			qids = append(qids, token(q))
		}
	}
	var out []string
	for _, t := range types {
		if len(f.Domains) == 0 {
			if len(f.QueueIDs) == 0 {
				out = append(out, Prefix+"."+t+".>")
				continue
			}
			for _, q := range qids {
				out = append(out, Prefix+"."+t+"."+q+".>")
			}
			continue
		}
		for _, d := range f.Domains {
			tok := tokens(address.SubjectToken(strings.ToLower(d)))
			for _, q := range qids {
				out = append(out, Prefix+"."+t+"."+q+"."+tok, Prefix+"."+t+"."+q+"."+tok+".>")
			}
			if len(f.QueueIDs) == 0 { // the older form
				out = append(out, Prefix+"."+t+"."+tok, Prefix+"."+t+"."+tok+".>")
			}
		}
	}
	out = dedupe(out)
	if collide(out) {
		out = nil
		for _, t := range types {
			out = append(out, Prefix+"."+t+".>")
		}
	}
	return out
}

func dedupe(s []string) []string {
	slices.Sort(s)
	return slices.Compact(s)
}

// collide reports whether two of the filters can match one subject.
func collide(filters []string) bool {
	for i := range filters {
		for j := i + 1; j < len(filters); j++ {
			if subjectsCollide(filters[i], filters[j]) {
				return true
			}
		}
	}
	return false
}

// subjectsCollide reports whether some subject matches both a and b
// (tokens "*" and a final ">" as NATS reads them).
func subjectsCollide(a, b string) bool {
	at, bt := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; ; i++ {
		switch {
		case i == len(at) && i == len(bt):
			return true
		case i == len(at) || i == len(bt):
			return false // ">" needs one more token
		case at[i] == ">" || bt[i] == ">":
			return true
		case at[i] != bt[i] && at[i] != "*" && bt[i] != "*":
			return false
		}
	}
}

// Match reports whether ev passes f (subjects aside).
func (f *Filter) Match(ev *Event) bool {
	if len(f.QueueIDs) > 0 && !slices.Contains(f.QueueIDs, ev.QueueID) {
		return false
	}
	if len(f.Senders) > 0 && !slices.ContainsFunc(f.Senders, func(s string) bool {
		return strings.Contains(strings.ToLower(ev.Sender), strings.ToLower(s))
	}) {
		return false
	}
	if len(f.Types) > 0 && !slices.Contains(f.Types, ev.Type) {
		return false
	}
	if len(f.Domains) > 0 && !slices.ContainsFunc(f.Domains, func(d string) bool {
		x := strings.ToLower(ev.Destination)
		return x == d || strings.HasSuffix(x, "."+d)
	}) {
		return false
	}
	return true
}

// Stored is one event as read from the stream: the event, its raw JSON
// (as published; what -o json prints and the webhook posts) and its
// stream sequence (shared by the events stored together).
type Stored struct {
	Event
	Raw []byte
	Seq uint64
}

// Unpack splits a stream message into its events' JSON: the message is
// one event (an object) or several that share its subject (an array;
// Publisher.EmitAll). A message that is neither is an error.
func Unpack(data []byte) ([]json.RawMessage, error) {
	data = bytes.TrimLeft(data, " \t\r\n")
	if len(data) > 0 && data[0] == '[' {
		var parts []json.RawMessage
		if err := json.Unmarshal(data, &parts); err != nil {
			return nil, fmt.Errorf("events: %w", err)
		}
		return parts, nil
	}
	if !json.Valid(data) {
		return nil, errors.New("events: a stream message that is not JSON")
	}
	return []json.RawMessage{data}, nil
}

// Count is how many events a stream message holds (0 if none can be read).
func Count(data []byte) int {
	parts, _ := Unpack(data)
	return len(parts)
}

// decode calls fn for each event of stream message data that decodes and
// matches f, in order; it stops at fn's first error.
func decode(data []byte, f *Filter, fn func(raw []byte, ev *Event) error) error {
	parts, err := Unpack(data)
	if err != nil {
		return nil // not an event: skipped
	}
	for _, raw := range parts {
		var ev Event
		if json.Unmarshal(raw, &ev) != nil || ev.Valid() != nil || (f != nil && !f.Match(&ev)) {
			continue // not an event ({} or null in an array is not one)
		}
		if err := fn(raw, &ev); err != nil {
			return err
		}
	}
	return nil
}

// FollowOptions say where a read starts and whether it stops.
type FollowOptions struct {
	Since time.Time // zero: only events published from now on (unless All)
	All   bool      // from the first event the stream holds
	// Stop returns once the events stored when the read began are read
	// (and matched), instead of following new ones.
	Stop bool
	// Ready, when set, is called once the server-side consumer exists:
	// events published after it are seen.
	Ready func()
}

// Follow reads the events matching f from stream st, in stream order,
// calling fn for each, until ctx ends, fn fails, or (with Stop) the stream
// has no more. An event that does not decode is skipped.
func Follow(ctx context.Context, st jetstream.Stream, f Filter, o FollowOptions, fn func(Stored) error) error {
	cfg := jetstream.OrderedConsumerConfig{FilterSubjects: f.Subjects(), DeliverPolicy: jetstream.DeliverNewPolicy}
	switch {
	case o.All:
		cfg.DeliverPolicy = jetstream.DeliverAllPolicy
	case !o.Since.IsZero():
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &o.Since
	}
	c, err := st.OrderedConsumer(ctx, cfg)
	if err != nil {
		return fmt.Errorf("events: %w", err)
	}
	if o.Ready != nil {
		o.Ready()
	}
	if o.Stop {
		if info := c.CachedInfo(); info != nil && info.NumPending == 0 {
			return nil
		}
	}
	for {
		m, err := c.Next(jetstream.FetchMaxWait(time.Second))
		if errors.Is(err, jetstream.ErrNoMessages) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) {
			if ctx.Err() != nil {
				return nil
			}
			continue
		}
		if errors.Is(err, nats.ErrNoResponders) {
			// The stream has no leader for a moment (an election after a
			// NATS server restarted): wait and ask again.
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(500 * time.Millisecond):
			}
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("events: %w", err)
		}
		meta, err := m.Metadata()
		if err != nil {
			return fmt.Errorf("events: %w", err)
		}
		if err := decode(m.Data(), &f, func(raw []byte, ev *Event) error {
			return fn(Stored{Event: *ev, Raw: raw, Seq: meta.Sequence.Stream})
		}); err != nil {
			return err
		}
		if o.Stop && meta.NumPending == 0 {
			return nil
		}
	}
}
