package queue

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailfwd/mailfwd/pkg/testenv"
)

// TestVerify: the layout Bootstrap makes verifies clean; a consumer made
// with another ack wait, and a missing stream and buckets, are reported.
func TestVerify(t *testing.T) {
	n := testenv.StartNATS(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	q, err := Connect(ctx, Config{URL: n.URL(), AckWait: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
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
	for _, w := range []string{"stream MAIL", "consumer workers", "consumer accepts", "bucket MAIL_REFS", "bucket MAIL_HOLDS", "bucket MAIL_TRACE", "bucket MAIL_SHAPING"} {
		if !missing[w] {
			t.Errorf("before bootstrap: %s not reported missing (%+v)", w, f)
		}
	}
	if err := q.Bootstrap(ctx); err != nil {
		t.Fatal(err)
	}
	l, f, err := q.Verify(ctx)
	if err != nil || len(f) != 0 || l.Stream == nil || l.Consumer == nil || len(l.Buckets) != 4 || l.Account == nil {
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
	if err != nil || len(f) != 3 || !strings.Contains(diffs["consumer workers"], "ack_wait 1m0s, want 3m0s") ||
		!strings.Contains(diffs["consumer accepts"], "ack_wait 1m0s, want 3m0s") ||
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
