package shaping_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/mailfwd/mailfwd/pkg/shaping"
)

// The operator's view of a GCRA value agrees with what Take does on it: on
// a frozen clock, after k events (and after some time has passed), Left is
// exactly how many more Take admits, Used the rest of the burst, NextIn the
// wait Take names, FullAt when the value is paid off.
func TestPaceStateAgreesWithTake(t *testing.T) {
	_, b := bucket(t)
	ctx := context.Background()
	start := time.Unix(1_800_000_000, 0)
	for i, tc := range []struct {
		pace    shaping.Pace
		taken   int
		elapsed time.Duration
	}{
		{shaping.Pace{Rate: 3.0 / 3600, Burst: 3}, 0, 0},
		{shaping.Pace{Rate: 3.0 / 3600, Burst: 3}, 2, 0},
		{shaping.Pace{Rate: 3.0 / 3600, Burst: 3}, 3, 0},
		{shaping.Pace{Rate: 3.0 / 3600, Burst: 3}, 3, 1250 * time.Second}, // one paid back, a bit more under way
		{shaping.Pace{Rate: 10, Burst: 10}, 7, 250 * time.Millisecond},
		{shaping.Pace{Rate: 2, Burst: 1}, 1, 100 * time.Millisecond},
		{shaping.Pace{Rate: 0.5, Burst: 4}, 4, time.Hour}, // all paid off
	} {
		key := fmt.Sprintf("v.%d", i)
		now := start
		g := shaping.NewGCRA(b, 0, func() time.Time { return now })
		paces := []shaping.Pace{tc.pace}
		for range tc.taken {
			if w, _, err := g.Take(ctx, key, paces); err != nil || w != 0 {
				t.Fatalf("case %d: setup take refused (%v, %v)", i, w, err)
			}
		}
		now = now.Add(tc.elapsed)
		val, _, err := b.Get(ctx, key)
		if tc.taken == 0 {
			val = nil // nothing stored: no debt
		} else if err != nil {
			t.Fatal(err)
		}
		tat := shaping.ReadTATs(val, 1)[0]
		st := tc.pace.State(tat, now)

		left := 0
		var wait time.Duration
		for {
			w, _, err := g.Take(ctx, key, paces)
			if err != nil {
				t.Fatal(err)
			}
			if w > 0 {
				wait = w
				break
			}
			left++
		}
		if st.Left != left || st.Used != max(tc.pace.Burst, 1)-left {
			t.Errorf("case %d (%+v, %d taken, %v later): state %+v, but Take admitted %d more", i, tc.pace, tc.taken, tc.elapsed, st, left)
		}
		if st.Left == 0 && st.NextIn != wait {
			t.Errorf("case %d: NextIn %v, Take waits %v", i, st.NextIn, wait)
		}
		if st.Left > 0 && st.NextIn != 0 {
			t.Errorf("case %d: NextIn %v with %d left", i, st.NextIn, st.Left)
		}
		if paidOff := !tat.After(now); paidOff != st.FullAt.IsZero() || (!paidOff && !st.FullAt.Equal(tat)) {
			t.Errorf("case %d: FullAt %v, value paid off at %v (now %v)", i, st.FullAt, tat, now)
		}
	}
}
