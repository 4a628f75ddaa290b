package queue_test

import (
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/mailfwd/mailfwd/pkg/blob"
	"github.com/mailfwd/mailfwd/pkg/envelope"
	"github.com/mailfwd/mailfwd/pkg/queue"
)

// age sets the modification time of body key in an FS store.
func age(t *testing.T, store *blob.FS, key string, d time.Duration) {
	t.Helper()
	found := false
	err := filepath.WalkDir(store.Dir(), func(p string, de fs.DirEntry, err error) error {
		if err == nil && de.Name() == key {
			found = true
			return os.Chtimes(p, time.Now().Add(-d), time.Now().Add(-d))
		}
		return err
	})
	if err != nil || !found {
		t.Fatalf("age %s: found %v, %v", key, found, err)
	}
}

// Bodies and refs entries that no envelope refers to (a failed accept
// whose outcome was unknown, a crash between its steps) are found once they
// are older than the threshold and removed; everything an envelope in any
// state refers to, and anything younger, stays.
func TestSweeperRemovesOnlyOldOrphans(t *testing.T) {
	f := setup(t)
	ctx := ctxT(t)
	store, err := blob.NewFS(t.TempDir(), false)
	if err != nil {
		t.Fatal(err)
	}
	body := []byte("Subject: x\r\n\r\nbody\r\n")
	put := func(key string) {
		t.Helper()
		if err := store.Put(ctx, key, body); err != nil {
			t.Fatal(err)
		}
	}
	// Orphans: a body, and a refs entry with its body (an accept whose
	// commit went unanswered and was not stored; here: its envelopes
	// consumed without a release).
	orphanBody := envelope.NewQueueID()
	put(orphanBody)
	lost := newEnvelopes(envelope.NewQueueID(), "e.test", "f.test")
	put(lost[0].BodyKey)
	if err := f.q.Enqueue(ctx, lost); err != nil {
		t.Fatal(err)
	}
	jobs := f.fetch(t, 2, 5*time.Second)
	if len(jobs) != 2 {
		t.Fatalf("fetched %d of 2", len(jobs))
	}
	for _, j := range jobs {
		_ = j.Ack(ctx)
	}
	for i := 0; f.streamMsgs(t) != 0; i++ {
		if i > 500 {
			t.Fatal("acked envelopes still in the stream after 5s")
		}
		time.Sleep(10 * time.Millisecond) // acks are not confirmed
	}
	// Live: a two-domain message (refs + envelopes), one deferred, one held.
	live := newEnvelopes(envelope.NewQueueID(), "a.test", "b.test")
	put(live[0].BodyKey)
	if err := f.q.Enqueue(ctx, live); err != nil {
		t.Fatal(err)
	}
	deferred := newEnvelopes(envelope.NewQueueID(), "c.test")[0]
	put(deferred.BodyKey)
	if err := f.q.Defer(ctx, deferred, time.Now().Add(time.Hour), "1"); err != nil {
		t.Fatal(err)
	}
	held := newEnvelopes(envelope.NewQueueID(), "d.test")[0]
	put(held.BodyKey)
	if err := f.q.MoveToHeld(ctx, held, "1"); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{live[0].BodyKey, deferred.BodyKey, held.BodyKey, orphanBody, lost[0].BodyKey} {
		age(t, store, k, 2*time.Hour)
	}
	const minAge = 500 * time.Millisecond
	time.Sleep(minAge + 100*time.Millisecond) // the refs entries' age
	young := envelope.NewQueueID()
	put(young)

	orphans, err := f.q.Orphans(ctx, store, minAge)
	if err != nil {
		t.Fatalf("orphans: %v", err)
	}
	var got []string
	for _, o := range orphans {
		got = append(got, o.Kind+":"+o.Key)
	}
	slices.Sort(got)
	want := []string{"body:" + lost[0].BodyKey, "body:" + orphanBody, "refs:" + lost[0].QueueID}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Fatalf("orphans %v; want %v", got, want)
	}
	removed := map[string]int{}
	s := queue.Sweeper{Queue: f.q, Bodies: store, MinAge: minAge, Removed: func(k string) { removed[k]++ }}
	n, err := s.Sweep(ctx)
	if err != nil || n != 3 || removed[queue.OrphanBody] != 2 || removed[queue.OrphanRefs] != 1 {
		t.Fatalf("sweep removed %d (%v), %v; want 2 bodies and 1 refs entry", n, removed, err)
	}
	for _, k := range []string{live[0].BodyKey, deferred.BodyKey, held.BodyKey, young} {
		if _, err := store.Get(ctx, k); err != nil {
			t.Fatalf("live or young body %s: %v", k, err)
		}
	}
	if _, err := store.Get(ctx, orphanBody); err == nil {
		t.Fatal("orphan body still there after the sweep")
	}
	if keys := f.refsKeys(t); !slices.Equal(keys, []string{live[0].QueueID}) {
		t.Fatalf("refs after the sweep: %v; want only the live message's", keys)
	}
	if again, err := f.q.Orphans(ctx, store, minAge); err != nil || len(again) != 0 {
		t.Fatalf("orphans after the sweep: %v, %v", again, err)
	}
}
