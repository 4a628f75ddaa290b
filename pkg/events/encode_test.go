package events

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"
	"time"
)

// Every field of Event set: AppendJSON writes what encoding/json writes. A
// field added to Event and not to AppendJSON fails here.
func TestAppendJSONHasEveryField(t *testing.T) {
	var ev Event
	v := reflect.ValueOf(&ev).Elem()
	for i := range v.NumField() {
		f := v.Field(i)
		switch f.Kind() {
		case reflect.String:
			f.SetString("v" + v.Type().Field(i).Name)
		case reflect.Int, reflect.Int64:
			f.SetInt(int64(i + 1))
		case reflect.Struct: // time.Time
			f.Set(reflect.ValueOf(time.Date(2026, 12, 7, 11, 40, 2, 100+i, time.UTC)))
		default:
			t.Fatalf("field %s of kind %s: teach this test and AppendJSON", v.Type().Field(i).Name, f.Kind())
		}
	}
	same(t, &ev)
	same(t, &Event{}) // every omittable field left out
}

func same(t *testing.T, ev *Event) {
	t.Helper()
	want, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	if got := ev.AppendJSON(nil); !bytes.Equal(got, want) {
		t.Fatalf("AppendJSON\n%s\nencoding/json\n%s", got, want)
	}
}

// Whatever the strings and times, Marshal is byte for byte encoding/json's.
func FuzzAppendJSON(f *testing.F) {
	f.Add("<ev1@origin.test>", "451 4.3.1 \"storage\" \\ full", "ops@exämple.net", "\x00\xff", int64(1733571602), int64(100), 60)
	f.Add("", "", "", "\u2028&", int64(-62135596800), int64(0), 0)
	f.Add("a\bb\fc\x01\x1f\x7f", "\n\r\t", "<>&", "\"\\", int64(0), int64(1), 3600)
	f.Fuzz(func(t *testing.T, a, b, c, d string, sec, nsec int64, off int) {
		tm := time.Unix(sec, nsec).In(time.FixedZone("z", off))
		ev := Event{Schema: 1, ID: a, Type: Type(b), Time: tm, Source: c, QueueID: d, MessageID: a, Sender: b, Recipient: c,
			Reply: d, Arrived: tm, NextAttempt: tm.Add(time.Minute), Size: sec, Attempt: off, Detail: a + b}
		want, werr := json.Marshal(&ev)
		got, gerr := ev.Marshal()
		if (werr == nil) != (gerr == nil) || !bytes.Equal(got, want) {
			t.Fatalf("Marshal %q (%v), encoding/json %q (%v)", got, gerr, want, werr)
		}
	})
}

func BenchmarkMarshal(b *testing.B) {
	ev := Event{Schema: 1, ID: NewID(), Type: Delivered, Time: time.Now().UTC(), Source: "worker/worker-7c9", QueueID: "dcb9gghksdudshfsg7r0",
		MessageID: "<bench-0123456789@origin.test>", Sender: "sender@origin.test", Recipient: "r123@alpha.test", Destination: "alpha.test",
		Arrived: time.Now().UTC(), Size: 1938, Attempt: 1, Relay: "mx.alpha.test", RelayAddr: "127.0.0.2", DSN: "2.0.0",
		Reply: "250 2.0.0 OK queued as 0123456789", TLS: "TLSv1.3", TLSVerify: "OK"}
	b.Run("encoding/json", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_, _ = json.Marshal(&ev)
		}
	})
	b.Run("AppendJSON", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_, _ = ev.Marshal()
		}
	})
}
