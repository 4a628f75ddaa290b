// Package envelope defines the queue entry that travels through JetStream:
// one Envelope per (message, recipient domain). The body lives in the blob
// store under BodyKey and is shared by every envelope of the message.
package envelope

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/rs/xid"
)

// Recipient is one envelope recipient and its delivery history.
type Recipient struct {
	Addr      string `json:"addr"`                 // verbatim, as the client sent it
	Attempts  int    `json:"attempts,omitempty"`   // attempts made so far
	LastError string `json:"last_error,omitempty"` // last temporary failure
}

// Envelope is the JetStream message body for one recipient domain of a message.
type Envelope struct {
	QueueID     string      `json:"qid"`
	From        string      `json:"from"`   // "" is the null reverse-path
	Domain      string      `json:"domain"` // recipient domain, A-labels or address literal
	Recipients  []Recipient `json:"rcpts"`
	BodyKey     string      `json:"body"`
	Size        int64       `json:"size"`
	EightBit    bool        `json:"8bit,omitempty"`
	UTF8        bool        `json:"utf8,omitempty"`
	MsgID       string      `json:"msgid,omitempty"`
	ClientAddr  string      `json:"client_addr,omitempty"`
	ClientHelo  string      `json:"client_helo,omitempty"`
	Arrived     time.Time   `json:"arrived"`
	Parts       int         `json:"parts"` // envelopes sharing the body (recipient domains)
	Attempts    int         `json:"attempts,omitempty"`
	NextAttempt time.Time   `json:"next_attempt,omitempty"`
	LastError   string      `json:"last_error,omitempty"`
}

// NewQueueID returns a new, globally unique, time-ordered queue id of 20
// lower-case base32 characters (safe as a NATS subject token and blob key).
func NewQueueID() string { return xid.New().String() }

// Marshal encodes e for the queue.
func (e *Envelope) Marshal() ([]byte, error) { return json.Marshal(e) }

// Unmarshal decodes and checks an envelope read from the queue.
func Unmarshal(b []byte) (*Envelope, error) {
	var e Envelope
	if err := json.Unmarshal(b, &e); err != nil {
		return nil, fmt.Errorf("envelope: %w", err)
	}
	if err := e.Validate(); err != nil {
		return nil, err
	}
	return &e, nil
}

// Validate reports an envelope that cannot be delivered whatever happens.
func (e *Envelope) Validate() error {
	switch {
	case e.QueueID == "":
		return errors.New("envelope: missing queue id")
	case e.Domain == "":
		return fmt.Errorf("envelope %s: missing domain", e.QueueID)
	case len(e.Recipients) == 0:
		return fmt.Errorf("envelope %s: no recipients", e.QueueID)
	case e.BodyKey == "":
		return fmt.Errorf("envelope %s: missing body key", e.QueueID)
	case e.Parts < 1:
		return fmt.Errorf("envelope %s: parts must be at least 1", e.QueueID)
	}
	return nil
}

// Addrs returns the recipient addresses.
func (e *Envelope) Addrs() []string {
	out := make([]string, len(e.Recipients))
	for i, r := range e.Recipients {
		out[i] = r.Addr
	}
	return out
}
