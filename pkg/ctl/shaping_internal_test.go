package ctl

import (
	"encoding/json"
	"strconv"
	"testing"
	"time"

	"github.com/mailfwd/mailfwd/pkg/shaping"
)

// shapingState reads every kind of key the workers write to MAIL_SHAPING:
// slot leases, the message pace, the new-connection pace and suspensions.
func TestShapingStateReadsEveryKey(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	ns := func(d time.Duration) []byte { return []byte(strconv.FormatInt(now.Add(d).UnixNano(), 10)) }
	susp, err := json.Marshal(shaping.Suspension{Until: now.Add(10 * time.Minute), Why: "421 4.7.0 try again later", By: "w1"})
	if err != nil {
		t.Fatal(err)
	}
	items := shapingState(map[string][]byte{
		"l.dest_test.0": []byte("w1"),
		"l.dest_test.1": []byte("w2"),
		"r.dest_test":   ns(250 * time.Millisecond),
		"c.dest_test":   ns(2 * time.Second),
		"r.idle_test":   ns(-time.Second), // paid off: listed, nothing due
		"s.sus_test":    susp,
		"c.junk_test":   []byte("not a time"),
	}, now)
	byName := map[string]shapingItem{}
	for _, it := range items {
		byName[it.Destination] = it
	}
	d, ok := byName[shaping.DestName("dest_test")]
	if !ok {
		t.Fatalf("no dest_test in %+v", items)
	}
	if d.SlotsInUse != 2 || d.RateNextFreeMs != 250 || d.ConnNextFreeMs != 2000 {
		t.Errorf("dest_test = %+v, want 2 slots, rate next free 250 ms, new conn next free 2000 ms", d)
	}
	if i := byName[shaping.DestName("idle_test")]; i.RateNextFreeMs != 0 || i.ConnNextFreeMs != 0 {
		t.Errorf("idle_test = %+v, want nothing due", i)
	}
	if j := byName[shaping.DestName("junk_test")]; j.ConnNextFreeMs != 0 {
		t.Errorf("junk_test = %+v, want an unreadable pace read as nothing due", j)
	}
	s := byName[shaping.DestName("sus_test")]
	if s.SuspendedUntil == nil || !s.SuspendedUntil.Equal(now.Add(10*time.Minute)) || s.By != "w1" {
		t.Errorf("sus_test = %+v, want suspended for 10 minutes by w1", s)
	}
}
