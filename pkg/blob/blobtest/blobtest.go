// Package blobtest is the acceptance suite every blob.Store implementation
// must pass.
package blobtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"github.com/mailfwd/mailfwd/pkg/blob"
)

// opTimeout bounds every store call the suite makes.
const opTimeout = 30 * time.Second

// Run runs the acceptance suite. newStore must return a fresh, empty, ready
// (bootstrapped) store; it is called once per subtest with the subtest's t.
func Run(t *testing.T, newStore func(t *testing.T) blob.Store) {
	t.Helper()

	t.Run("RoundTrip", func(t *testing.T) {
		s := newStore(t)
		binary := make([]byte, 0, 512)
		for i := range 256 {
			binary = append(binary, byte(i))
		}
		binary = append(binary, "\r\n.\r\n\x00\x00\r\r\n\n\xff"...)
		cases := []struct {
			key  string
			data []byte
		}{
			{"empty", []byte{}},
			{"one-byte", []byte{'x'}},
			{"binary_8bit", binary},
			{"big.5MiB", randomBytes(5<<20, 1)},
			{"max-" + strings.Repeat("Az09._-", 20)[:blob.MaxKeyLen-4], []byte("longest key")},
		}
		for _, tc := range cases {
			put(t, s, tc.key, tc.data)
		}
		for _, tc := range cases {
			mustGet(t, s, tc.key, tc.data)
		}
	})

	t.Run("Stream", func(t *testing.T) {
		s := newStore(t)
		// Bodies larger than one S3 part, written and read in small pieces.
		for _, n := range []int{0, 1, 70_000, 12<<20 + 7} {
			key := fmt.Sprintf("stream-%d", n)
			data := randomBytes(n, uint64(n)+3)
			// Short reads must not be taken for the end of the body.
			var r io.Reader = &chunkReader{data: data, chunk: 4093}
			if n < 16 {
				r = iotest.OneByteReader(bytes.NewReader(data))
			}
			got, err := s.PutStream(opCtx(t), key, r)
			if err != nil {
				t.Fatalf("PutStream(%q, %d bytes): %v", key, n, err)
			}
			if got != int64(n) {
				t.Fatalf("PutStream(%q) stored %d bytes, want %d", key, got, n)
			}
			mustGet(t, s, key, data)
			rc, size, err := s.Open(opCtx(t), key)
			if err != nil {
				t.Fatalf("Open(%q): %v", key, err)
			}
			read, err := io.ReadAll(rc)
			_ = rc.Close()
			if err != nil || size != int64(n) || !bytes.Equal(read, data) {
				t.Fatalf("Open(%q): size %d, read %d bytes, err %v; want %d bytes", key, size, len(read), err, n)
			}
		}
	})

	t.Run("StreamReadErrorStoresNothing", func(t *testing.T) {
		s := newStore(t)
		put(t, s, "kept", []byte("the old body"))
		boom := errors.New("client went away")
		for _, key := range []string{"fresh", "kept"} {
			r := io.MultiReader(bytes.NewReader(randomBytes(6<<20, 9)), iotest.ErrReader(boom))
			if _, err := s.PutStream(opCtx(t), key, r); !errors.Is(err, boom) {
				t.Fatalf("PutStream(%q) with a failing reader = %v, want it to wrap %v", key, err, boom)
			}
		}
		mustNotFound(t, s, "fresh")
		mustGet(t, s, "kept", []byte("the old body"))
		var keys []string
		if err := s.List(opCtx(t), func(k string, _ time.Time) error { keys = append(keys, k); return nil }); err != nil {
			t.Fatalf("List: %v", err)
		}
		if len(keys) != 1 || keys[0] != "kept" {
			t.Fatalf("List after failed streams = %q, want only [kept]", keys)
		}
	})

	t.Run("OpenMissing", func(t *testing.T) {
		s := newStore(t)
		if rc, _, err := s.Open(opCtx(t), "nope"); !errors.Is(err, blob.ErrNotFound) {
			if rc != nil {
				_ = rc.Close()
			}
			t.Fatalf("Open(missing) = %v, want ErrNotFound", err)
		}
	})

	t.Run("List", func(t *testing.T) {
		s := newStore(t)
		before := time.Now().Add(-time.Minute)
		want := map[string]bool{}
		for i := range 40 {
			k := fmt.Sprintf("list-%02d", i)
			put(t, s, k, []byte(k))
			want[k] = true
		}
		if err := s.Delete(opCtx(t), "list-07"); err != nil {
			t.Fatal(err)
		}
		delete(want, "list-07")
		got := map[string]bool{}
		err := s.List(opCtx(t), func(k string, mod time.Time) error {
			if got[k] {
				t.Errorf("List returned %q twice", k)
			}
			got[k] = true
			if mod.Before(before) || mod.After(time.Now().Add(time.Minute)) {
				t.Errorf("List: %q modified %v, want about now", k, mod)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("List: %v", err)
		}
		if len(got) != len(want) {
			t.Fatalf("List returned %d keys, want %d", len(got), len(want))
		}
		for k := range want {
			if !got[k] {
				t.Errorf("List did not return %q", k)
			}
		}
		stop := errors.New("stop")
		calls := 0
		if err := s.List(opCtx(t), func(string, time.Time) error { calls++; return stop }); !errors.Is(err, stop) || calls != 1 {
			t.Fatalf("List with fn failing: err %v after %d calls, want the fn's error after 1", err, calls)
		}
	})

	t.Run("Overwrite", func(t *testing.T) {
		s := newStore(t)
		put(t, s, "k", []byte("the first, longer body\r\n"))
		put(t, s, "k", []byte("second"))
		mustGet(t, s, "k", []byte("second"))
	})

	t.Run("GetMissing", func(t *testing.T) {
		s := newStore(t)
		put(t, s, "present", []byte("p"))
		mustNotFound(t, s, "absent")
	})

	t.Run("DeleteMissing", func(t *testing.T) {
		s := newStore(t)
		ctx := opCtx(t)
		if err := s.Delete(ctx, "never-stored"); err != nil {
			t.Fatalf("Delete of missing key: %v", err)
		}
	})

	t.Run("DeleteThenGet", func(t *testing.T) {
		s := newStore(t)
		put(t, s, "a", []byte("body a"))
		put(t, s, "b", []byte("body b"))
		if err := s.Delete(opCtx(t), "a"); err != nil {
			t.Fatalf("Delete: %v", err)
		}
		mustNotFound(t, s, "a")
		mustGet(t, s, "b", []byte("body b"))
		if err := s.Delete(opCtx(t), "a"); err != nil {
			t.Fatalf("second Delete: %v", err)
		}
	})

	t.Run("InvalidKeys", func(t *testing.T) {
		s := newStore(t)
		for _, key := range []string{"", ".", "..", "a/b", "../x", "a b", "ü", "a\x00", strings.Repeat("k", blob.MaxKeyLen+1)} {
			ctx := opCtx(t)
			if err := s.Put(ctx, key, []byte("x")); err == nil {
				t.Errorf("Put(%q) succeeded, want error", key)
			}
			if _, err := s.Get(ctx, key); err == nil || errors.Is(err, blob.ErrNotFound) {
				t.Errorf("Get(%q) = %v, want invalid-key error", key, err)
			}
			if err := s.Delete(ctx, key); err == nil {
				t.Errorf("Delete(%q) succeeded, want error", key)
			}
		}
	})

	t.Run("Concurrent", func(t *testing.T) {
		s := newStore(t)
		const n = 50
		body := func(i, round int) []byte {
			return append([]byte(fmt.Sprintf("key %d round %d\r\n", i, round)), randomBytes(1000+i*37, uint64(i*10+round))...)
		}
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				key := fmt.Sprintf("msg-%03d", i)
				for round := range 3 {
					ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
					err := s.Put(ctx, key, body(i, round))
					if err == nil {
						var got []byte
						got, err = s.Get(ctx, key)
						if err == nil && !bytes.Equal(got, body(i, round)) {
							err = fmt.Errorf("got %d bytes, not the %d just put", len(got), len(body(i, round)))
						}
					}
					cancel()
					if err != nil {
						t.Errorf("key %s round %d: %v", key, round, err)
						return
					}
				}
			})
		}
		// Writers and readers racing on one key: a reader sees a whole body
		// (one of the versions written) or nothing yet, never a torn one.
		const shared = "shared"
		versions := [][]byte{randomBytes(64<<10, 101), randomBytes(64<<10, 102), randomBytes(64<<10, 103)}
		for w := range 4 {
			wg.Go(func() {
				for j := range 5 {
					ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
					err := s.Put(ctx, shared, versions[(w+j)%len(versions)])
					cancel()
					if err != nil {
						t.Errorf("Put shared: %v", err)
						return
					}
				}
			})
		}
		for range 4 {
			wg.Go(func() {
				for range 10 {
					ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
					got, err := s.Get(ctx, shared)
					cancel()
					if errors.Is(err, blob.ErrNotFound) {
						continue
					}
					if err != nil {
						t.Errorf("Get shared: %v", err)
						return
					}
					if !slicesContainBytes(versions, got) {
						t.Errorf("Get shared returned %d bytes matching no written version", len(got))
						return
					}
				}
			})
		}
		wg.Wait()
		for i := range n {
			mustGet(t, s, fmt.Sprintf("msg-%03d", i), body(i, 2))
		}
	})

	t.Run("Check", func(t *testing.T) {
		s := newStore(t)
		if err := s.Check(opCtx(t)); err != nil {
			t.Fatalf("Check: %v", err)
		}
		// Check must not leave anything a Get could see or trip over.
		put(t, s, "after-check", []byte("x"))
		mustGet(t, s, "after-check", []byte("x"))
	})

	t.Run("Bootstrap idempotent", func(t *testing.T) {
		s := newStore(t)
		put(t, s, "kept", []byte("kept body"))
		var wg sync.WaitGroup
		for range 3 {
			wg.Go(func() {
				if err := blob.Bootstrap(opCtx(t), s); err != nil {
					t.Errorf("Bootstrap on ready store: %v", err)
				}
			})
		}
		wg.Wait()
		mustGet(t, s, "kept", []byte("kept body"))
	})

	t.Run("ContextCancelled", func(t *testing.T) {
		s := newStore(t)
		put(t, s, "exists", []byte("e"))
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := s.Put(ctx, "new", []byte("n")); !errors.Is(err, context.Canceled) {
			t.Errorf("Put with cancelled ctx = %v, want context.Canceled", err)
		}
		if _, err := s.Get(ctx, "exists"); !errors.Is(err, context.Canceled) {
			t.Errorf("Get with cancelled ctx = %v, want context.Canceled", err)
		}
		if err := s.Delete(ctx, "exists"); !errors.Is(err, context.Canceled) {
			t.Errorf("Delete with cancelled ctx = %v, want context.Canceled", err)
		}
		if err := s.Check(ctx); !errors.Is(err, context.Canceled) {
			t.Errorf("Check with cancelled ctx = %v, want context.Canceled", err)
		}
		// Nothing happened: the Put did not store, the Delete did not delete.
		mustNotFound(t, s, "new")
		mustGet(t, s, "exists", []byte("e"))
	})
}

func opCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	t.Cleanup(cancel)
	return ctx
}

func put(t *testing.T, s blob.Store, key string, data []byte) {
	t.Helper()
	if err := s.Put(opCtx(t), key, data); err != nil {
		t.Fatalf("Put(%q, %d bytes): %v", key, len(data), err)
	}
}

func mustGet(t *testing.T, s blob.Store, key string, want []byte) {
	t.Helper()
	got, err := s.Get(opCtx(t), key)
	if err != nil {
		t.Fatalf("Get(%q): %v", key, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("Get(%q) returned %d bytes, want %d bytes; first difference at %d", key, len(got), len(want), firstDiff(got, want))
	}
}

func mustNotFound(t *testing.T, s blob.Store, key string) {
	t.Helper()
	got, err := s.Get(opCtx(t), key)
	if !errors.Is(err, blob.ErrNotFound) {
		t.Fatalf("Get(%q) = %d bytes, %v; want ErrNotFound", key, len(got), err)
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

func slicesContainBytes(set [][]byte, b []byte) bool {
	for _, s := range set {
		if bytes.Equal(s, b) {
			return true
		}
	}
	return false
}

// randomBytes returns n deterministic pseudo-random bytes (all 256 values,
// including CR, LF and NUL).
func randomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// chunkReader yields data in reads of at most chunk bytes.
type chunkReader struct {
	data  []byte
	chunk int
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), c.chunk)], c.data)
	c.data = c.data[n:]
	return n, nil
}
