package blob_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mailfwd/mailfwd/pkg/blob"
	"github.com/mailfwd/mailfwd/pkg/blob/blobtest"
	"github.com/mailfwd/mailfwd/pkg/testenv"
)

func openS3(t *testing.T, rawURL string) blob.Store {
	t.Helper()
	s, err := blob.Open(context.Background(), rawURL)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	if _, ok := s.(*blob.S3); !ok {
		t.Fatalf("Open returned %T, want *blob.S3", s)
	}
	return s
}

func bootstrap(t *testing.T, s blob.Store) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := blob.Bootstrap(ctx, s); err != nil {
		t.Fatalf("Bootstrap: %v", err)
	}
}

func TestS3Acceptance(t *testing.T) {
	m := testenv.StartMinio(t)
	var n atomic.Int64
	blobtest.Run(t, func(t *testing.T) blob.Store {
		s := openS3(t, m.URL(fmt.Sprintf("accept-%d", n.Add(1))))
		bootstrap(t, s)
		return s
	})
}

func TestS3AcceptanceWithPrefix(t *testing.T) {
	m := testenv.StartMinio(t)
	var n atomic.Int64
	blobtest.Run(t, func(t *testing.T) blob.Store {
		u := strings.Replace(m.URL("shared"), "@shared?", fmt.Sprintf("@shared/run-%d/?", n.Add(1)), 1)
		s := openS3(t, u)
		bootstrap(t, s)
		return s
	})
}

func TestS3PrefixesAreIsolated(t *testing.T) {
	m := testenv.StartMinio(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	withPrefix := func(p string) blob.Store {
		return openS3(t, strings.Replace(m.URL("mail"), "@mail?", "@mail/"+p+"?", 1))
	}
	root, a, b := openS3(t, m.URL("mail")), withPrefix("a"), withPrefix("b")
	bootstrap(t, root)
	for _, st := range []struct {
		s    blob.Store
		body string
	}{{root, "root"}, {a, "in a"}, {b, "in b"}} {
		if err := st.s.Put(ctx, "k", []byte(st.body)); err != nil {
			t.Fatalf("Put: %v", err)
		}
	}
	if err := a.Delete(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Get(ctx, "k"); !errors.Is(err, blob.ErrNotFound) {
		t.Fatalf("Get after Delete under prefix a = %v, want ErrNotFound", err)
	}
	for _, st := range []struct {
		s    blob.Store
		want string
	}{{root, "root"}, {b, "in b"}} {
		got, err := st.s.Get(ctx, "k")
		if err != nil || string(got) != st.want {
			t.Fatalf("Get = %q, %v; want %q", got, err, st.want)
		}
	}
}

func TestS3CheckAndConcurrentBootstrap(t *testing.T) {
	m := testenv.StartMinio(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	s := openS3(t, m.URL("not-yet"))
	err := s.Check(ctx)
	if err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Fatalf("Check before Bootstrap = %v, want bucket-does-not-exist error", err)
	}
	if err := s.Put(ctx, "k", []byte("v")); err == nil {
		t.Fatal("Put into a missing bucket succeeded")
	}

	// Several pods bootstrapping at once, each with its own client.
	var wg sync.WaitGroup
	for i := range 5 {
		wg.Go(func() {
			if err := blob.Bootstrap(ctx, openS3(t, m.URL("not-yet"))); err != nil {
				t.Errorf("pod %d Bootstrap: %v", i, err)
			}
		})
	}
	wg.Wait()
	if err := s.Check(ctx); err != nil {
		t.Fatalf("Check after Bootstrap: %v", err)
	}
	if err := s.Put(ctx, "k", []byte("v")); err != nil {
		t.Fatalf("Put after Bootstrap: %v", err)
	}
}

func TestS3BadCredentials(t *testing.T) {
	m := testenv.StartMinio(t)
	bootstrap(t, openS3(t, m.URL("creds")))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	bad := openS3(t, strings.Replace(m.URL("creds"), m.SecretKey, "wrong-secret-key", 1))
	if err := bad.Check(ctx); err == nil {
		t.Fatal("Check with a wrong secret key succeeded")
	}
	if err := bad.Put(ctx, "k", []byte("v")); err == nil {
		t.Fatal("Put with a wrong secret key succeeded")
	}
	if _, err := bad.Get(ctx, "k"); err == nil || errors.Is(err, blob.ErrNotFound) {
		t.Fatalf("Get with a wrong secret key = %v, want an auth error (not ErrNotFound)", err)
	}
}

func TestS3EnvCredentials(t *testing.T) {
	m := testenv.StartMinio(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	noCreds := fmt.Sprintf("s3://envcreds?endpoint=%s&secure=false", m.Endpoint)

	for _, vars := range [][2]string{
		{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"},
		{"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"},
	} {
		t.Run(vars[0], func(t *testing.T) {
			for _, k := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"} {
				t.Setenv(k, "")
			}
			t.Setenv(vars[0], m.AccessKey)
			t.Setenv(vars[1], m.SecretKey)
			s := openS3(t, noCreds)
			bootstrap(t, s)
			if err := s.Put(ctx, "k-"+vars[0], []byte("v")); err != nil {
				t.Fatalf("Put with credentials from %s: %v", vars[0], err)
			}
		})
	}
}

// TestS3Restart covers "body store down": writes fail (bounded by the
// context) while MinIO is stopped, and bodies stored before survive the
// restart on the same data directory.
func TestS3Restart(t *testing.T) {
	m := testenv.StartMinio(t)
	s := openS3(t, m.URL("restart"))
	bootstrap(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := s.Put(ctx, "before", []byte("stored before the outage\r\n")); err != nil {
		t.Fatalf("Put: %v", err)
	}

	m.Stop()
	m.Stop() // idempotent
	down, downCancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer downCancel()
	if err := s.Put(down, "during", []byte("x")); err == nil {
		t.Fatal("Put succeeded while MinIO was stopped")
	}
	checkCtx, checkCancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer checkCancel()
	if err := s.Check(checkCtx); err == nil {
		t.Fatal("Check succeeded while MinIO was stopped")
	}

	m.Start()
	got, err := s.Get(ctx, "before")
	if err != nil || string(got) != "stored before the outage\r\n" {
		t.Fatalf("Get after restart = %q, %v", got, err)
	}
	if _, err := s.Get(ctx, "during"); !errors.Is(err, blob.ErrNotFound) {
		t.Fatalf("Get of the key put during the outage = %v, want ErrNotFound", err)
	}
	if err := s.Check(ctx); err != nil {
		t.Fatalf("Check after restart: %v", err)
	}
	if err := s.Put(ctx, "after", []byte("y")); err != nil {
		t.Fatalf("Put after restart: %v", err)
	}

	// A second cycle: the port is reusable more than once.
	m.Stop()
	m.Start()
	if got, err := s.Get(ctx, "after"); err != nil || string(got) != "y" {
		t.Fatalf("Get after second restart = %q, %v", got, err)
	}
}
