package blob_test

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mailfwd/mailfwd/pkg/blob"
	"github.com/mailfwd/mailfwd/pkg/blob/blobtest"
)

func newFS(t *testing.T, dir string, fsync bool) *blob.FS {
	t.Helper()
	s, err := blob.NewFS(dir, fsync)
	if err != nil {
		t.Fatalf("NewFS(%q): %v", dir, err)
	}
	if err := blob.Bootstrap(context.Background(), s); err != nil {
		t.Fatalf("Bootstrap: %v", err)
	}
	return s
}

func TestFSAcceptance(t *testing.T) {
	blobtest.Run(t, func(t *testing.T) blob.Store { return newFS(t, t.TempDir(), true) })
}

func TestFSAcceptanceNoFsync(t *testing.T) {
	blobtest.Run(t, func(t *testing.T) blob.Store { return newFS(t, t.TempDir(), false) })
}

// listFiles returns the paths (relative to dir) of all regular files under dir.
func listFiles(t *testing.T, dir string) []string {
	t.Helper()
	var files []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			rel, _ := filepath.Rel(dir, p)
			files = append(files, filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", dir, err)
	}
	return files
}

func TestFSLayout(t *testing.T) {
	dir := t.TempDir()
	s := newFS(t, dir, true)
	ctx := context.Background()

	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 256 {
		t.Fatalf("after Bootstrap %s has %d entries, want 256 shard directories", dir, len(entries))
	}
	for _, e := range entries {
		if !e.IsDir() || len(e.Name()) != 2 || strings.Trim(e.Name(), "0123456789abcdef") != "" {
			t.Errorf("unexpected entry %q in store root", e.Name())
		}
	}

	keys := []string{"a", "b", "msg-1", "msg-2", "Z.z_9-"}
	for _, k := range keys {
		if err := s.Put(ctx, k, []byte("body of "+k)); err != nil {
			t.Fatalf("Put(%q): %v", k, err)
		}
	}
	// Overwrite one to exercise rename-over-existing.
	if err := s.Put(ctx, "a", []byte("new a")); err != nil {
		t.Fatal(err)
	}
	files := listFiles(t, dir)
	if len(files) != len(keys) {
		t.Fatalf("files on disk = %v, want exactly one per key (no temp files left)", files)
	}
	shards := map[string]bool{}
	for _, f := range files {
		shard, name, ok := strings.Cut(f, "/")
		if !ok || strings.Contains(name, "/") || strings.HasPrefix(name, "~") {
			t.Errorf("file %q is not <shard>/<key>", f)
		}
		shards[shard] = true
	}
	if len(shards) < 2 {
		t.Errorf("%d keys all landed in shards %v; want them spread by hash", len(keys), shards)
	}

	// A new instance on the same directory (a restarted process) finds
	// every body in the same place.
	s2 := newFS(t, dir, true)
	for _, k := range keys {
		want := "body of " + k
		if k == "a" {
			want = "new a"
		}
		got, err := s2.Get(ctx, k)
		if err != nil || string(got) != want {
			t.Errorf("after reopen Get(%q) = %q, %v; want %q", k, got, err, want)
		}
	}
}

func TestFSWithoutBootstrap(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "not", "yet", "there")
	s, err := blob.NewFS(dir, true)
	if err != nil {
		t.Fatalf("NewFS: %v", err)
	}
	ctx := context.Background()
	if err := s.Check(ctx); err != nil {
		t.Fatalf("Check on fresh dir: %v", err)
	}
	if err := s.Put(ctx, "k", []byte("v")); err != nil {
		t.Fatalf("Put before Bootstrap (shard dir created lazily): %v", err)
	}
	if got, err := s.Get(ctx, "k"); err != nil || string(got) != "v" {
		t.Fatalf("Get = %q, %v; want \"v\"", got, err)
	}
}

func TestFSCheckFails(t *testing.T) {
	ctx := context.Background()
	t.Run("root removed", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "store")
		s := newFS(t, dir, true)
		if err := os.RemoveAll(dir); err != nil {
			t.Fatal(err)
		}
		if err := s.Check(ctx); err == nil {
			t.Fatal("Check succeeded on a removed directory")
		}
		if _, err := s.Get(ctx, "k"); !errors.Is(err, blob.ErrNotFound) {
			t.Fatalf("Get on removed directory = %v, want ErrNotFound", err)
		}
	})
	t.Run("root replaced by a file", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "store")
		s := newFS(t, dir, true)
		if err := os.RemoveAll(dir); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dir, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
		err := s.Check(ctx)
		if err == nil || !strings.Contains(err.Error(), "not a directory") {
			t.Fatalf("Check = %v, want a 'not a directory' error", err)
		}
		if err := s.Put(ctx, "k", []byte("v")); err == nil {
			t.Fatal("Put succeeded with the root replaced by a file")
		}
	})
}

func TestNewFSErrors(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{"", filepath.Join(file, "sub")} {
		if _, err := blob.NewFS(dir, true); err == nil {
			t.Errorf("NewFS(%q) succeeded, want error", dir)
		}
	}
}

func TestValidateKey(t *testing.T) {
	for _, tc := range []struct {
		key string
		ok  bool
	}{
		{"a", true},
		{"01JABCDEF.eml", true},
		{"A-Z_a-z.0-9", true},
		{strings.Repeat("x", blob.MaxKeyLen), true},
		{strings.Repeat("x", blob.MaxKeyLen+1), false},
		{"", false},
		{".", false},
		{"..", false},
		{"...", true},
		{"a/b", false},
		{`a\b`, false},
		{"a b", false},
		{"~put-1", false},
		{"é", false},
	} {
		err := blob.ValidateKey(tc.key)
		if (err == nil) != tc.ok {
			t.Errorf("ValidateKey(%q) = %v, want ok=%v", tc.key, err, tc.ok)
		}
	}
}
