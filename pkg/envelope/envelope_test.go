package envelope

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/rs/xid"
)

func fullEnvelope() *Envelope {
	return &Envelope{
		QueueID: "cv0s6tbp0n8g00c2s6rg",
		From:    "+4512345678/TYPE=PLMN@mms.mnc001.mcc238.gprs",
		Domain:  "xn--bcher-kva.example",
		Recipients: []Recipient{
			{Addr: "jörg@bücher.example"},
			{Addr: `"john doe"@bücher.example`, Attempts: 2, LastError: "451 4.3.0 try later"},
		},
		BodyKey:       "bodies/cv0s6tbp0n8g00c2s6rg",
		Size:          123456,
		EightBit:      true,
		UTF8:          true,
		MsgID:         "<abc@example.com>",
		ClientAddr:    "127.0.0.1:53412",
		ClientHelo:    "client.example.com",
		Arrived:       time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC),
		Parts:         3,
		Attempts:      2,
		NextAttempt:   time.Date(2024, 5, 6, 7, 38, 9, 0, time.UTC),
		LastError:     "451 4.4.1 Connection refused",
		DKIMSignature: "DKIM-Signature: v=1; d=example.com; s=s1; b=abc\r\n",
	}
}

func TestMarshalRoundTrip(t *testing.T) {
	minimal := &Envelope{
		QueueID:    "cv0s6tbp0n8g00c2s6rg",
		Domain:     "[192.0.2.1]",
		Recipients: []Recipient{{Addr: "user@[192.0.2.1]"}},
		BodyKey:    "b",
		Parts:      1,
		Arrived:    time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC),
	}
	for name, e := range map[string]*Envelope{"full": fullEnvelope(), "minimal null sender": minimal} {
		t.Run(name, func(t *testing.T) {
			b, err := e.Marshal()
			if err != nil {
				t.Fatalf("Marshal: %v", err)
			}
			got, err := Unmarshal(b)
			if err != nil {
				t.Fatalf("Unmarshal(%s): %v", b, err)
			}
			if !reflect.DeepEqual(got, e) {
				t.Errorf("round trip:\n got %+v\nwant %+v", got, e)
			}
		})
	}
}

func TestMarshalFieldNames(t *testing.T) {
	b, err := fullEnvelope().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"qid", "from", "domain", "rcpts", "body", "size", "8bit", "utf8", "msgid",
		"client_addr", "client_helo", "arrived", "parts", "attempts", "next_attempt", "last_error", "dkim"} {
		if _, ok := m[k]; !ok {
			t.Errorf("JSON has no %q field: %s", k, b)
		}
	}
	rcpts, _ := m["rcpts"].([]any)
	if len(rcpts) != 2 {
		t.Fatalf("rcpts = %v", m["rcpts"])
	}
	first, _ := rcpts[0].(map[string]any)
	if _, ok := first["attempts"]; ok {
		t.Errorf("zero recipient attempts not omitted: %v", first)
	}
	second, _ := rcpts[1].(map[string]any)
	if second["addr"] != `"john doe"@bücher.example` || second["attempts"] != float64(2) || second["last_error"] == nil {
		t.Errorf("second recipient = %v", second)
	}
	// The null reverse-path must survive as "from":"" (not be dropped).
	e := fullEnvelope()
	e.From = ""
	b, _ = e.Marshal()
	if !strings.Contains(string(b), `"from":""`) {
		t.Errorf("null sender not encoded as \"from\":\"\": %s", b)
	}
}

func TestTimesKeepTheInstant(t *testing.T) {
	e := fullEnvelope()
	zone := time.FixedZone("CEST", 2*60*60)
	e.Arrived = time.Date(2024, 5, 6, 9, 8, 9, 1, zone)
	b, err := e.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	got, err := Unmarshal(b)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Arrived.Equal(e.Arrived) {
		t.Errorf("Arrived = %v, want %v", got.Arrived, e.Arrived)
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name   string
		modify func(*Envelope)
		want   string // substring of the error; "" = valid
	}{
		{"valid", func(*Envelope) {}, ""},
		{"null sender is valid", func(e *Envelope) { e.From = "" }, ""},
		{"address literal domain is valid", func(e *Envelope) { e.Domain = "[192.0.2.1]" }, ""},
		{"missing queue id", func(e *Envelope) { e.QueueID = "" }, "missing queue id"},
		{"missing domain", func(e *Envelope) { e.Domain = "" }, "missing domain"},
		{"nil recipients", func(e *Envelope) { e.Recipients = nil }, "no recipients"},
		{"empty recipients", func(e *Envelope) { e.Recipients = []Recipient{} }, "no recipients"},
		{"neither body key nor inline body", func(e *Envelope) { e.BodyKey = "" }, "neither a body key nor an inline body"},
		{"inline body, one part", func(e *Envelope) { e.BodyKey, e.Body, e.Parts = "", []byte("Subject: x\r\n\r\nhi\r\n"), 1 }, ""},
		{"inline body shared by two domains", func(e *Envelope) { e.BodyKey, e.Body, e.Parts = "", []byte("x"), 2 }, "inline body must not be shared"},
		{"zero parts", func(e *Envelope) { e.Parts = 0 }, "parts must be at least 1"},
		{"negative parts", func(e *Envelope) { e.Parts = -1 }, "parts must be at least 1"},
		{"DKIM signature, folded", func(e *Envelope) {
			e.DKIMSignature = "DKIM-Signature: v=1; a=ed25519-sha256;\r\n d=example.com; b=abc\r\n"
		}, ""},
		{"DKIM signature without CRLF", func(e *Envelope) { e.DKIMSignature = "DKIM-Signature: v=1" }, "DKIM-Signature field"},
		{"DKIM signature that is another field", func(e *Envelope) { e.DKIMSignature = "Subject: pwned\r\n" }, "DKIM-Signature field"},
		{"DKIM signature smuggling a second field", func(e *Envelope) { e.DKIMSignature = "DKIM-Signature: v=1\r\nBcc: x@y\r\n" }, "DKIM-Signature field"},
		{"DKIM signature ending the header", func(e *Envelope) { e.DKIMSignature = "DKIM-Signature: v=1\r\n\r\nbody\r\n" }, "DKIM-Signature field"},
		{"DKIM signature with a bare LF", func(e *Envelope) { e.DKIMSignature = "DKIM-Signature: v=1\nBcc: x\r\n" }, "DKIM-Signature field"},
		{"DKIM signature too long", func(e *Envelope) {
			e.DKIMSignature = "DKIM-Signature: " + strings.Repeat("a", MaxSignatureLen) + "\r\n"
		}, "DKIM-Signature field"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := fullEnvelope()
			tt.modify(e)
			err := e.Validate()
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Validate succeeded, want error containing %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Validate error %q, want it to contain %q", err, tt.want)
			}
			if e.QueueID != "" && !strings.Contains(err.Error(), e.QueueID) {
				t.Errorf("Validate error %q does not name queue id %s", err, e.QueueID)
			}
			// Unmarshal applies the same checks.
			b, merr := e.Marshal()
			if merr != nil {
				t.Fatal(merr)
			}
			if got, uerr := Unmarshal(b); uerr == nil || got != nil {
				t.Errorf("Unmarshal of an invalid envelope = %v, %v; want nil and an error", got, uerr)
			}
		})
	}
}

func TestUnmarshalErrors(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want string
	}{
		{"empty", "", "envelope:"},
		{"not JSON", "hello", "envelope:"},
		{"truncated", `{"qid":"x","domain":`, "envelope:"},
		{"wrong type", `{"qid":1}`, "envelope:"},
		{"JSON null", `null`, "missing queue id"},
		{"empty object", `{}`, "missing queue id"},
		{"no recipients", `{"qid":"q1","domain":"example.com","body":"b","parts":1}`, "no recipients"},
		{"no parts", `{"qid":"q1","domain":"example.com","rcpts":[{"addr":"a@example.com"}],"body":"b"}`, "parts"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e, err := Unmarshal([]byte(tt.in))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Unmarshal(%q) = %v, %v; want error containing %q", tt.in, e, err, tt.want)
			}
			if e != nil {
				t.Errorf("Unmarshal(%q) returned an envelope with the error", tt.in)
			}
		})
	}
}

func TestUnmarshalIgnoresUnknownFields(t *testing.T) {
	in := `{"qid":"q1","domain":"example.com","rcpts":[{"addr":"a@example.com","future":1}],"body":"b","parts":1,"new_field":true}`
	e, err := Unmarshal([]byte(in))
	if err != nil {
		t.Fatalf("Unmarshal: %v", err)
	}
	if e.QueueID != "q1" || len(e.Recipients) != 1 || e.Recipients[0].Addr != "a@example.com" {
		t.Errorf("Unmarshal = %+v", e)
	}
}

func TestAddrs(t *testing.T) {
	e := fullEnvelope()
	want := []string{"jörg@bücher.example", `"john doe"@bücher.example`}
	if got := e.Addrs(); !reflect.DeepEqual(got, want) {
		t.Errorf("Addrs() = %q, want %q", got, want)
	}
	if got := (&Envelope{}).Addrs(); got == nil || len(got) != 0 {
		t.Errorf("Addrs() of no recipients = %#v, want an empty slice", got)
	}
}

var queueIDRE = regexp.MustCompile(`^[0-9a-v]{20}$`)

func TestNewQueueID(t *testing.T) {
	const n = 10000
	seen := make(map[string]bool, n)
	var prev time.Time
	for i := 0; i < n; i++ {
		id := NewQueueID()
		if !queueIDRE.MatchString(id) {
			t.Fatalf("NewQueueID() = %q, want [0-9a-v]{20}", id)
		}
		if seen[id] {
			t.Fatalf("NewQueueID() returned %q twice within %d ids", id, i+1)
		}
		seen[id] = true
		// Ids are time-ordered: the embedded time never goes backwards.
		x, err := xid.FromString(id)
		if err != nil {
			t.Fatalf("NewQueueID() = %q is not an xid: %v", id, err)
		}
		if x.Time().Before(prev) {
			t.Fatalf("NewQueueID() = %q has time %v before the previous id's %v", id, x.Time(), prev)
		}
		prev = x.Time()
	}
}

func TestNewQueueIDConcurrent(t *testing.T) {
	const workers, per = 8, 1000
	out := make(chan []string, workers)
	for w := 0; w < workers; w++ {
		go func() {
			ids := make([]string, per)
			for i := range ids {
				ids[i] = NewQueueID()
			}
			out <- ids
		}()
	}
	seen := make(map[string]bool, workers*per)
	for w := 0; w < workers; w++ {
		for _, id := range <-out {
			if seen[id] {
				t.Fatalf("duplicate queue id %q across goroutines", id)
			}
			seen[id] = true
		}
	}
}

func TestTruncateError(t *testing.T) {
	if got := TruncateError("short"); got != "short" {
		t.Errorf("TruncateError(short) = %q", got)
	}
	long := strings.Repeat("ü", MaxErrorLen) // 2 bytes each
	got := TruncateError(long)
	if len(got) > MaxErrorLen || !utf8.ValidString(got) || !strings.HasSuffix(got, "…") {
		t.Errorf("TruncateError: %d bytes, valid UTF-8 %v, %q…", len(got), utf8.ValidString(got), got[:10])
	}
	e := &Envelope{LastError: "shared"}
	if e.RcptError(Recipient{}) != "shared" || e.RcptError(Recipient{LastError: "own"}) != "own" {
		t.Error("RcptError does not fall back to the envelope's error")
	}
}

func inlineEnvelope(body []byte) *Envelope {
	return &Envelope{QueueID: "cv0s6tbp0n8g00c2s6rg", Domain: "example.com",
		Recipients: []Recipient{{Addr: "a@example.com"}}, Body: body, Parts: 1, Size: int64(len(body)),
		Arrived: time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)}
}

// An inline body travels after the JSON as raw bytes, not as base64 in it,
// and comes back byte for byte, newlines, NULs and all.
func TestInlineBodyIsRawAfterTheJSON(t *testing.T) {
	body := []byte("Subject: x\r\n\r\nline\n\x00\"{\\}\r\n.\r\n\n")
	for name, b := range map[string][]byte{"body": body, "empty": {}} {
		t.Run(name, func(t *testing.T) {
			e := inlineEnvelope(b)
			enc, err := e.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			head, rest, ok := bytes.Cut(enc, []byte("\n"))
			if !ok || !bytes.Equal(rest, b) {
				t.Fatalf("encoded %q: want the JSON, a newline and the raw body", enc)
			}
			if bytes.Contains(head, []byte(`"inline":`)) || !bytes.Contains(head, []byte(fmt.Sprintf(`"inline_size":%d`, len(b)))) && len(b) > 0 {
				t.Errorf("JSON part %s: want inline_size and no base64 copy", head)
			}
			got, err := Unmarshal(enc)
			if err != nil {
				t.Fatalf("Unmarshal: %v", err)
			}
			if got.Body == nil || !bytes.Equal(got.Body, b) || got.InlineSize != 0 {
				t.Fatalf("body %q (size field %d), want %q", got.Body, got.InlineSize, b)
			}
			if e.InlineSize != 0 || !bytes.Equal(e.Body, b) {
				t.Errorf("Marshal changed its envelope: %+v", e)
			}
			// Appending to the decoded body must not write into the message.
			_ = append(got.Body, 'X')
			if !bytes.Equal(enc[len(head)+1:], b) {
				t.Errorf("append to Body wrote into the encoded message")
			}
		})
	}
}

// What earlier releases wrote (the body base64 in "inline") still decodes.
func TestInlineBodyOfEarlierReleases(t *testing.T) {
	e := inlineEnvelope([]byte("old\r\n"))
	old, err := json.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Unmarshal(old)
	if err != nil || string(got.Body) != "old\r\n" {
		t.Fatalf("Unmarshal(%s) = %+v, %v", old, got, err)
	}
}

func TestInlineBodyMismatchesAreRefused(t *testing.T) {
	enc, err := inlineEnvelope([]byte("0123456789")).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	head, _, _ := bytes.Cut(enc, []byte("\n"))
	bothJSON, _ := json.Marshal(inlineEnvelope([]byte("x")))
	for name, in := range map[string][]byte{
		"truncated body":    enc[:len(enc)-3],
		"longer body":       append(append([]byte{}, enc...), "more"...),
		"size without body": head,
		"both encodings":    append(append(bothJSON, '\n'), 'x'),
	} {
		t.Run(name, func(t *testing.T) {
			if e, err := Unmarshal(in); err == nil {
				t.Fatalf("Unmarshal(%q) = %+v, want an error", in, e)
			}
		})
	}
}

func FuzzUnmarshal(f *testing.F) {
	enc, _ := inlineEnvelope([]byte("body\n")).Marshal()
	f.Add(enc)
	f.Add([]byte(`{"qid":"q1","domain":"example.com","rcpts":[{"addr":"a@example.com"}],"body":"b","parts":1}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := Unmarshal(b)
		if err != nil {
			return
		}
		again, err := e.Marshal()
		if err != nil {
			t.Fatalf("Marshal of a decoded envelope: %v", err)
		}
		e2, err := Unmarshal(again)
		if err != nil {
			t.Fatalf("a decoded envelope does not decode again: %v", err)
		}
		if !bytes.Equal(e.Body, e2.Body) || e.QueueID != e2.QueueID || len(e.Recipients) != len(e2.Recipients) {
			t.Fatalf("round trip changed the envelope")
		}
	})
}

// Queue ids name a message's body (its blob key), its refs entry and its
// message ids: one seen id (in a Received header, a bounce) must not tell
// the next ones. xid's machine, process and counter bytes would; the id
// keeps only xid's time and shape.
func TestQueueIDsAreNotPredictable(t *testing.T) {
	prev, err := xid.FromString(NewQueueID())
	if err != nil {
		t.Fatal(err)
	}
	same := 0
	for range 1000 {
		s := NewQueueID()
		id, err := xid.FromString(s)
		if err != nil || len(s) != 20 || s != strings.ToLower(s) {
			t.Fatalf("queue id %q: %v", s, err)
		}
		if bytes.Equal(id[4:9], prev[4:9]) { // xid: machine id and pid
			same++
		}
		prev = id
	}
	if same > 10 {
		t.Fatalf("%d of 1000 consecutive queue ids share the 5 bytes after the time: the next id can be guessed from one", same)
	}
}
