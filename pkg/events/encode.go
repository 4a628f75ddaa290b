package events

import (
	"encoding/json"
	"strconv"
	"time"
	"unicode/utf8"
)

// AppendJSON appends ev's JSON to b: byte for byte what encoding/json makes
// of it (FuzzAppendJSON checks), without its reflection and allocations;
// an event is encoded on the mail path for every recipient and attempt.
func (ev *Event) AppendJSON(b []byte) []byte {
	b = append(b, `{"schema":`...)
	b = strconv.AppendInt(b, int64(ev.Schema), 10)
	b = appendStr(b, `,"id":`, ev.ID)
	b = appendStr(b, `,"type":`, string(ev.Type))
	b = appendTime(b, `,"time":`, ev.Time)
	b = appendStrOmit(b, `,"source":`, ev.Source)
	b = appendStrOmit(b, `,"queue_id":`, ev.QueueID)
	b = appendStrOmit(b, `,"message_id":`, ev.MessageID)
	b = appendStr(b, `,"sender":`, ev.Sender)
	b = appendStrOmit(b, `,"recipient":`, ev.Recipient)
	b = appendStrOmit(b, `,"destination":`, ev.Destination)
	if !ev.Arrived.IsZero() {
		b = appendTime(b, `,"arrived":`, ev.Arrived)
	}
	b = appendIntOmit(b, `,"size":`, ev.Size)
	b = appendStrOmit(b, `,"client":`, ev.Client)
	b = appendIntOmit(b, `,"attempt":`, int64(ev.Attempt))
	b = appendStrOmit(b, `,"relay":`, ev.Relay)
	b = appendStrOmit(b, `,"relay_addr":`, ev.RelayAddr)
	b = appendStrOmit(b, `,"dsn":`, ev.DSN)
	b = appendStrOmit(b, `,"reply":`, ev.Reply)
	b = appendStrOmit(b, `,"tls":`, ev.TLS)
	b = appendStrOmit(b, `,"tls_verify":`, ev.TLSVerify)
	if !ev.NextAttempt.IsZero() {
		b = appendTime(b, `,"next_attempt":`, ev.NextAttempt)
	}
	b = appendStrOmit(b, `,"dsn_queue_id":`, ev.DSNQueueID)
	b = appendStrOmit(b, `,"actor":`, ev.Actor)
	b = appendStrOmit(b, `,"action":`, ev.Action)
	b = appendStrOmit(b, `,"target":`, ev.Target)
	b = appendIntOmit(b, `,"matched":`, int64(ev.Matched))
	b = appendStrOmit(b, `,"detail":`, ev.Detail)
	return append(b, '}')
}

func appendStrOmit(b []byte, key, s string) []byte {
	if s == "" {
		return b
	}
	return appendStr(b, key, s)
}

func appendIntOmit(b []byte, key string, n int64) []byte {
	if n == 0 {
		return b
	}
	return strconv.AppendInt(append(b, key...), n, 10)
}

// appendStr appends key and s as a JSON string, escaped as encoding/json
// does: ASCII here, anything else (non-ASCII, invalid UTF-8) through it.
func appendStr(b []byte, key, s string) []byte {
	b = append(b, key...)
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			q, _ := json.Marshal(s) // a string always encodes
			return append(b, q...)
		}
	}
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
			continue
		}
		b = append(b, s[start:i]...)
		switch c {
		case '"', '\\':
			b = append(b, '\\', c)
		case '\b':
			b = append(b, '\\', 'b')
		case '\f':
			b = append(b, '\\', 'f')
		case '\n':
			b = append(b, '\\', 'n')
		case '\r':
			b = append(b, '\\', 'r')
		case '\t':
			b = append(b, '\\', 't')
		default: // other control characters and <, >, & (HTML-safe, as encoding/json)
			b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
		}
		start = i + 1
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

const hexDigits = "0123456789abcdef"

// appendTime appends key and t as encoding/json does (RFC 3339 with
// nanoseconds) for a plainTime; Marshal falls back to encoding/json for
// the others (which it refuses).
func appendTime(b []byte, key string, t time.Time) []byte {
	b = append(b, key...)
	b = append(b, '"')
	b = t.AppendFormat(b, time.RFC3339Nano)
	return append(b, '"')
}

// plainTime: t encodes as AppendFormat writes it (encoding/json refuses
// years outside 0–9999 and zone offsets with seconds).
func plainTime(t time.Time) bool {
	_, off := t.Zone()
	return t.Year() >= 0 && t.Year() <= 9999 && off%60 == 0
}

// Marshal is ev's JSON: AppendJSON, or encoding/json for times it does not
// write the same way.
func (ev *Event) Marshal() ([]byte, error) {
	if plainTime(ev.Time) && plainTime(ev.Arrived) && plainTime(ev.NextAttempt) {
		return ev.AppendJSON(make([]byte, 0, 1024)), nil
	}
	return json.Marshal(ev)
}
