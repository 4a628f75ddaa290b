package maillog_test

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/mailfwd/mailfwd/pkg/config"
	"github.com/mailfwd/mailfwd/pkg/maillog"
)

// jsonKeys decodes one JSON object and returns its top-level keys in
// order, duplicates included (encoding/json's map decoding would hide them).
func jsonKeys(t *testing.T, line []byte) ([]string, map[string]any) {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(line))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		t.Fatalf("not a JSON object: %s", line)
	}
	var keys []string
	vals := map[string]any{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			t.Fatal(err)
		}
		k := tok.(string)
		var v any
		if err := dec.Decode(&v); err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
		vals[k] = v
	}
	return keys, vals
}

// Defect 3 of issue 20: a worker delivery line in JSON had "queue_id"
// twice, "tls":"tls=none" and durations as bare nanoseconds.
func TestJSONDeliveryLineIsClean(t *testing.T) {
	var buf bytes.Buffer
	lg := config.Logging{Format: "json", Level: "info"}
	root, err := lg.Logger(&buf)
	if err != nil {
		t.Fatal(err)
	}
	// As the worker logs: its logger carries the queue id and domain.
	log := root.With("queue_id", "Q1", "domain", "example.net")
	t0 := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	for _, tls := range []string{"tls=TLSv1.3 verified=yes", "tls=none"} {
		buf.Reset()
		maillog.LogAttempt(context.Background(), log, maillog.Attempt{
			QueueID: "Q1", To: "ops@example.net", Arrived: t0, Started: t0.Add(60 * time.Second),
			Ended: t0.Add(61500 * time.Millisecond), Size: 100, NRcpts: 1, Attempts: 2,
			RelayHost: "mx.example.net", RelayAddr: "127.0.0.1", DSN: "2.0.0", Stat: "Sent (Ok)",
			TLS: tls, Verify: "OK",
		})
		keys, vals := jsonKeys(t, buf.Bytes())
		seen := map[string]bool{}
		for _, k := range keys {
			if seen[k] {
				t.Errorf("key %q appears twice: %s", k, buf.String())
			}
			seen[k] = true
		}
		if v, _ := vals["tls"].(string); strings.HasPrefix(v, "tls=") || v == "" {
			t.Errorf(`"tls" = %q, want the version alone: %s`, v, buf.String())
		}
		if _, ok := vals["delay"]; ok {
			t.Errorf(`"delay" is logged without a unit: %s`, buf.String())
		}
		if d, ok := vals["delay_seconds"].(float64); !ok || d != 61.5 {
			t.Errorf(`"delay_seconds" = %v, want 61.5: %s`, vals["delay_seconds"], buf.String())
		}
		if d, ok := vals["xdelay_seconds"].(float64); !ok || d != 1.5 {
			t.Errorf(`"xdelay_seconds" = %v, want 1.5: %s`, vals["xdelay_seconds"], buf.String())
		}
	}
}

// Every duration attribute any component logs comes out in seconds, with
// the unit in its key.
func TestJSONDurationsInSeconds(t *testing.T) {
	var buf bytes.Buffer
	root, err := (&config.Logging{Format: "json", Level: "info"}).Logger(&buf)
	if err != nil {
		t.Fatal(err)
	}
	root.Info("handed back", "retry_in", 1500*time.Millisecond)
	_, vals := jsonKeys(t, buf.Bytes())
	if d, ok := vals["retry_in_seconds"].(float64); !ok || d != 1.5 {
		t.Fatalf(`"retry_in_seconds" = %v, want 1.5: %s`, vals["retry_in_seconds"], buf.String())
	}
}
