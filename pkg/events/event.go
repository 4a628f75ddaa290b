// Package events is mailfwd's delivery event stream: one JSON event per
// per-recipient state change (received, delivered, deferred, bounced,
// expired, held, released, failed, bounced or purged by an operator) and
// one per operator action, published to their own JetStream stream. The
// schema is a contract (docs/events.md): fields are only ever added; a
// change that is not additive gets a new Schema number.
package events

import (
	"errors"
	"strings"
	"time"

	"github.com/nats-io/nuid"

	"github.com/mailfwd/mailfwd/pkg/address"
)

// Schema is the version of Event's layout. Readers check it: an event with a
// higher number may mean fields they do not know. A stream message holds
// one event or several (a JSON array; Unpack).
const Schema = 1

// Prefix starts every event subject: mailfwd.events.<type>.<queue
// id>.<destination>, the destination as the queue's subject tokens (labels
// reversed, net.example.mail), or mailfwd.events.audit.<action> for
// operator actions. Releases before the queue id was in the subject wrote
// mailfwd.events.<type>.<destination>; readers still find those by type
// and destination (Filter.Subjects).
const Prefix = "mailfwd.events"

// DefaultStream is the JetStream stream that holds the events.
const DefaultStream = "EVENTS"

// Type names a state change.
type Type string

// The event types. A message's recipient starts with Received and ends with
// one of Delivered, Bounced, Expired, Failed, OperatorBounced or
// OperatorPurged; Deferred, Held and Released come between.
const (
	Received        Type = "received"         // accepted by the ingress (250 sent after it)
	NotQueued       Type = "not_queued"       // received, then the queue refused it: the client got 451 and sends again
	Delivered       Type = "delivered"        // the next hop answered 250
	Deferred        Type = "deferred"         // a temporary failure: reply, next attempt
	Bounced         Type = "bounced"          // a permanent failure: a DSN goes to the sender
	Expired         Type = "expired"          // still deferred at the queue-return time: a DSN goes to the sender
	Held            Type = "held"             // moved aside: its domain is on hold
	Released        Type = "released"         // an operator released its domain, it is ready again
	Failed          Type = "failed"           // the terminal failed state (it could not be handled)
	OperatorBounced Type = "operator_bounced" // `mailfwdctl queue bounce`: returned to the sender
	OperatorPurged  Type = "operator_purged"  // `mailfwdctl queue purge`: removed without a DSN
	Audit           Type = "audit"            // an operator action (Action says which)
)

// Types lists every type, for --outcome's help and validation.
var Types = []Type{Received, NotQueued, Delivered, Deferred, Bounced, Expired, Held, Released, Failed,
	OperatorBounced, OperatorPurged, Audit}

// Event is one state change. Times are UTC, RFC 3339 with nanoseconds.
type Event struct {
	Schema int       `json:"schema"`
	ID     string    `json:"id"` // unique; the stream drops a copy published twice
	Type   Type      `json:"type"`
	Time   time.Time `json:"time"`
	Source string    `json:"source,omitempty"` // "ingress", "worker", "mailfwdctl" and the host

	QueueID     string    `json:"queue_id,omitempty"`
	MessageID   string    `json:"message_id,omitempty"` // the Message-ID header, as sent
	Sender      string    `json:"sender"`               // envelope sender; "" is the null sender
	Recipient   string    `json:"recipient,omitempty"`
	Destination string    `json:"destination,omitempty"` // the recipient's domain (A-label)
	Arrived     time.Time `json:"arrived,omitzero"`      // when the ingress accepted the message
	Size        int64     `json:"size,omitempty"`
	Client      string    `json:"client,omitempty"` // the submitting client's address (received)

	Attempt     int       `json:"attempt,omitempty"`    // delivery attempts made, this one included
	Relay       string    `json:"relay,omitempty"`      // the next hop's name
	RelayAddr   string    `json:"relay_addr,omitempty"` // and address
	DSN         string    `json:"dsn,omitempty"`        // enhanced status code, e.g. 2.0.0, 4.4.1
	Reply       string    `json:"reply,omitempty"`      // the remote's reply or the reason, one line
	TLS         string    `json:"tls,omitempty"`        // TLSv1.3, TLSv1.2, none
	TLSVerify   string    `json:"tls_verify,omitempty"` // sendmail's verify=: OK, FAIL, NO, NONE
	NextAttempt time.Time `json:"next_attempt,omitzero"`
	// DSNQueueID is the queue id of the DSN (bounce, or delay warning) this
	// change sent to the sender: that message's own events are under it.
	DSNQueueID string `json:"dsn_queue_id,omitempty"`

	// Operator actions (Audit, and the per-message events they cause).
	Actor   string `json:"actor,omitempty"`   // NATS user, or Kubernetes user for policy writes
	Action  string `json:"action,omitempty"`  // e.g. queue.hold, queue.bounce, policy.apply
	Target  string `json:"target,omitempty"`  // what the action named: a filter, a ConfigMap
	Matched int    `json:"matched,omitempty"` // how many envelopes or entries it acted on
	Detail  string `json:"detail,omitempty"`
}

// NewID returns a unique event id (a NUID: 22 characters, random prefix
// and sequence, cheap enough for every event).
func NewID() string { return nuid.Next() }

// Subject is where ev is published. The queue id is a token of its own,
// so a reader of one message's events (events tail --qid) has the server
// pick them out instead of reading the whole stream.
func Subject(ev *Event) string {
	if ev.Type == Audit {
		return Prefix + ".audit." + token(ev.Action)
	}
	d := "_none"
	if ev.Destination != "" {
		d = tokens(address.SubjectToken(strings.ToLower(ev.Destination)))
	}
	return Prefix + "." + token(string(ev.Type)) + "." + token(ev.QueueID) + "." + d
}

// tokens makes every dot-separated part of s a safe token: a destination
// that is not a valid domain still yields a valid subject.
func tokens(s string) string {
	parts := strings.Split(s, ".")
	for i, p := range parts {
		parts[i] = token(p)
	}
	return strings.Join(parts, ".")
}

// token makes s one safe subject token.
func token(s string) string {
	if s == "" {
		return "_none"
	}
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '_', r == '-':
			return r
		case r >= 'A' && r <= 'Z':
			return r + ('a' - 'A')
		}
		return '_'
	}, s)
}

// Valid checks the fields a reader relies on.
func (ev *Event) Valid() error {
	switch {
	case ev.Schema < 1:
		return errors.New("events: no schema version")
	case ev.ID == "":
		return errors.New("events: no id")
	case ev.Type == "":
		return errors.New("events: no type")
	case ev.Time.IsZero():
		return errors.New("events: no time")
	}
	return nil
}
