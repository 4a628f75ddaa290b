package queue

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// TestVerify: the layout Bootstrap makes verifies clean; a consumer made
// with another ack wait, and a missing stream and buckets, are reported.
func TestVerify(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	q, n := ConnectTest(t, ctx, Config{AckWait: time.Minute})
	_, f, err := q.Verify(ctx)
	if err != nil {
		t.Fatal(err)
	}
	missing := map[string]bool{}
	for _, x := range f {
		if x.Missing {
			missing[x.Kind+" "+x.Name] = true
		}
	}
	for _, w := range []string{"stream MAIL", "consumer workers", "consumer accepts", "bucket MAIL_REFS", "bucket MAIL_HOLDS", "bucket MAIL_TRACE", "bucket MAIL_SHAPING", "bucket MAIL_QUOTAS"} {
		if !missing[w] {
			t.Errorf("before bootstrap: %s not reported missing (%+v)", w, f)
		}
	}
	if err := q.Bootstrap(ctx); err != nil {
		t.Fatal(err)
	}
	l, f, err := q.Verify(ctx)
	if err != nil || len(f) != 0 || l.Stream == nil || l.Consumer == nil || len(l.Buckets) != 5 || l.Account == nil {
		t.Fatalf("after bootstrap: findings %+v, layout %+v, err %v", f, l, err)
	}
	// Another ack wait than this configuration's: the differences, named
	// (the consumer's ack wait, and the dedupe window derived from it).
	q2, err := Connect(ctx, Config{URL: n.URL(), AckWait: 3 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer q2.Close()
	_, f, err = q2.Verify(ctx)
	diffs := map[string]string{}
	for _, x := range f {
		diffs[x.Kind+" "+x.Name] = strings.Join(x.Diffs, "; ")
	}
	if err != nil || len(f) != 4 || !strings.Contains(diffs["consumer workers"], "ack_wait 1m0s, want 3m0s") ||
		!strings.Contains(diffs["consumer accepts"], "ack_wait 1m0s, want 3m0s") ||
		!strings.Contains(diffs["consumer deferrals"], "ack_wait 1m0s, want 3m0s") ||
		!strings.Contains(diffs["stream MAIL"], "duplicate window 2m0s, want 6m0s") {
		t.Fatalf("findings %+v, %v", f, err)
	}
	// What Bootstrap makes is what Verify expects (one source for both).
	js, _ := jetstream.New(q.nc)
	st, _ := js.Stream(ctx, "MAIL")
	if d := streamDiff(st.CachedInfo().Config, q.Expected().Stream); len(d) != 0 {
		t.Errorf("bootstrapped stream differs from Expected: %v", d)
	}
}

// A stream on which a publish right is a right to remove or multiply mail
// (the layout of releases before the deferrals consumer: schedules on,
// which nats-server answers by turning roll-ups on and purge allowed; or
// roll-ups and purges turned on by hand) is refused by Bootstrap with what
// to do, and reported by Verify. A refs bucket with roll-ups (every KV
// bucket is created so) is fixed in place.
func TestBootstrapRefusesAStreamThatLetsPublishersRemoveMail(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	q, _ := ConnectTest(t, ctx, Config{})
	js, _ := jetstream.New(q.nc)
	for _, c := range []struct {
		name   string
		edit   func(*jetstream.StreamConfig)
		unsafe []string
		fix    string
	}{
		{"earlier release (schedules)", func(c *jetstream.StreamConfig) { c.AllowMsgSchedules = true; c.DenyPurge = false },
			[]string{"allow_msg_schedules", "allow_rollup_hdrs", "deny_purge off"}, "mailfwdctl bootstrap --migrate"},
		{"roll-ups by hand", func(c *jetstream.StreamConfig) { c.AllowRollup = true; c.DenyPurge = false },
			[]string{"allow_rollup_hdrs", "deny_purge off"}, "--no-allow-rollup --deny-purge"},
		{"purge allowed", func(c *jetstream.StreamConfig) { c.DenyPurge = false },
			[]string{"deny_purge off"}, "--deny-purge"},
		{"message TTLs", func(c *jetstream.StreamConfig) { c.AllowMsgTTL = true },
			[]string{"allow_msg_ttl"}, "mailfwdctl bootstrap --migrate"},
	} {
		t.Run(c.name, func(t *testing.T) {
			// A server of its own: a stream deleted and made again at once
			// on one server can fail while its old files go.
			q, _ := ConnectTest(t, ctx, Config{})
			js, _ := jetstream.New(q.nc)
			sc := q.Expected().Stream
			c.edit(&sc)
			if _, err := js.CreateStream(ctx, sc); err != nil {
				t.Fatal(err)
			}
			err := q.Bootstrap(ctx)
			if !errors.Is(err, ErrUnsafeStream) || !strings.Contains(err.Error(), c.fix) {
				t.Fatalf("bootstrap: %v; want ErrUnsafeStream saying %q", err, c.fix)
			}
			for _, u := range c.unsafe {
				if !strings.Contains(err.Error(), u) {
					t.Errorf("bootstrap error does not name %q: %v", u, err)
				}
			}
			_, f, err := q.Verify(ctx)
			if err != nil {
				t.Fatal(err)
			}
			var unsafe []string
			for _, x := range f {
				if x.Kind == "stream" {
					unsafe = x.Unsafe
				}
			}
			if len(unsafe) != len(c.unsafe) {
				t.Errorf("verify: unsafe %q; want %d entries naming %q", unsafe, len(c.unsafe), c.unsafe)
			}
		})
	}

	// The refs bucket of an earlier release has roll-ups on: fixed in place.
	if _, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "MAIL_REFS"}); err != nil {
		t.Fatal(err)
	}
	if st, _ := js.Stream(ctx, "KV_MAIL_REFS"); !st.CachedInfo().Config.AllowRollup {
		t.Fatal("a new KV bucket has no roll-ups; this test checks nothing")
	}
	if err := q.Bootstrap(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(ctx, "KV_MAIL_REFS")
	if err != nil {
		t.Fatal(err)
	}
	if st.CachedInfo().Config.AllowRollup {
		t.Error("bootstrap left roll-ups on in the refs bucket")
	}
	if _, f, err := q.Verify(ctx); err != nil || len(f) != 0 {
		t.Errorf("after bootstrap: findings %+v, %v", f, err)
	}
}
