package blob

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/mailfwd/mailfwd/pkg/syncfs"
)

// Temp and probe files start with '~', which keys cannot contain, so they never
// collide with a stored body.
const (
	fsTempPattern  = "~put-*"
	fsProbePattern = "~check-*"
	fsShards       = 256
	fsDirPerm      = 0o750
)

// FS is a Store backed by a directory. Bodies live in <dir>/<shard>/<key>,
// where shard is two lowercase hex digits of the FNV-1a hash of the key (256
// subdirectories). Writes go to a temp file in the shard directory that is
// renamed over the final name, so readers see either the old or the new body,
// never a partial one.
type FS struct {
	dir   string
	fsync bool
	group *syncfs.Group // group commit (Linux); nil: fsync each file and directory
}

var _ Store = (*FS)(nil)
var _ Bootstrapper = (*FS)(nil)

// NewFS returns a Store keeping bodies under dir, creating dir if missing.
// With fsync true (what production wants) Put returns only once the body and
// its directory entry are on stable storage; false trades that for speed
// (tests, throwaway setups).
func NewFS(dir string, fsync bool) (*FS, error) {
	if dir == "" {
		return nil, errors.New("blob: fs: empty directory")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("blob: fs: resolve directory %q: %w", dir, err)
	}
	if err := os.MkdirAll(abs, fsDirPerm); err != nil {
		return nil, fmt.Errorf("blob: fs: create directory: %w", err)
	}
	f := &FS{dir: abs, fsync: fsync}
	if fsync {
		flush, _, err := syncfs.Flusher(abs)
		if err != nil {
			return nil, fmt.Errorf("blob: fs: %w", err)
		}
		if flush != nil {
			f.group = syncfs.NewGroup(flush)
		}
	}
	return f, nil
}

// Dir returns the absolute root directory.
func (f *FS) Dir() string { return f.dir }

// String describes the store for logs.
func (f *FS) String() string { return "file://" + filepath.ToSlash(f.dir) }

func fsShard(key string) string {
	h := fnv.New32a()
	_, _ = h.Write([]byte(key))
	return fmt.Sprintf("%02x", h.Sum32()&0xff)
}

func (f *FS) path(key string) (dir, file string) {
	dir = filepath.Join(f.dir, fsShard(key))
	return dir, filepath.Join(dir, key)
}

// Put implements Store.
func (f *FS) Put(ctx context.Context, key string, data []byte) error {
	_, err := f.put(ctx, key, "put", func(w io.Writer) (int64, error) {
		n, err := w.Write(data)
		return int64(n), err
	})
	return err
}

// PutStream implements Store: the body goes from r to a temp file in the
// shard directory through io.Copy's fixed buffer.
func (f *FS) PutStream(ctx context.Context, key string, r io.Reader) (int64, error) {
	return f.put(ctx, key, "put stream", func(w io.Writer) (int64, error) {
		return io.Copy(w, r)
	})
}

// put writes a temp file with write, makes it durable and renames it over
// the key's file. On any error the temp file is removed and key is untouched.
func (f *FS) put(ctx context.Context, key, op string, write func(io.Writer) (int64, error)) (int64, error) {
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("blob: fs: %s %q: %w", op, key, err)
	}
	if err := ValidateKey(key); err != nil {
		return 0, err
	}
	dir, final := f.path(key)
	tmp, err := os.CreateTemp(dir, fsTempPattern)
	if errors.Is(err, fs.ErrNotExist) {
		// Shard directory not created yet (no Bootstrap, or it was removed).
		if err = f.mkdirShard(dir); err != nil {
			return 0, fmt.Errorf("blob: fs: %s %q: %w", op, key, err)
		}
		tmp, err = os.CreateTemp(dir, fsTempPattern)
	}
	if err != nil {
		return 0, fmt.Errorf("blob: fs: %s %q: create temp file: %w", op, key, err)
	}
	tmpName := tmp.Name()
	committed := false
	defer func() {
		if !committed {
			_ = tmp.Close()
			_ = os.Remove(tmpName)
		}
	}()
	n, err := write(tmp)
	if err != nil {
		return n, fmt.Errorf("blob: fs: %s %q: write: %w", op, key, err)
	}
	if f.fsync && f.group == nil {
		if err := tmp.Sync(); err != nil {
			return n, fmt.Errorf("blob: fs: %s %q: fsync: %w", op, key, err)
		}
	}
	if err := tmp.Close(); err != nil {
		return n, fmt.Errorf("blob: fs: %s %q: close: %w", op, key, err)
	}
	if err := os.Rename(tmpName, final); err != nil {
		return n, fmt.Errorf("blob: fs: %s %q: rename: %w", op, key, err)
	}
	committed = true
	switch {
	case f.group != nil:
		// Group commit: one syncfs covers this body, its directory entry and
		// every other Put that finished writing meanwhile.
		if err := f.group.Wait(ctx); err != nil {
			return n, fmt.Errorf("blob: fs: %s %q: %w", op, key, err)
		}
	case f.fsync:
		if err := syncDir(dir); err != nil {
			return n, fmt.Errorf("blob: fs: %s %q: %w", op, key, err)
		}
	}
	return n, nil
}

// Get implements Store.
func (f *FS) Get(ctx context.Context, key string) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("blob: fs: get %q: %w", key, err)
	}
	if err := ValidateKey(key); err != nil {
		return nil, err
	}
	_, file := f.path(key)
	data, err := os.ReadFile(file)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("blob: fs: get %q: %w", key, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("blob: fs: get %q: %w", key, err)
	}
	return data, nil
}

// Open implements Store.
func (f *FS) Open(ctx context.Context, key string) (io.ReadCloser, int64, error) {
	if err := ctx.Err(); err != nil {
		return nil, 0, fmt.Errorf("blob: fs: open %q: %w", key, err)
	}
	if err := ValidateKey(key); err != nil {
		return nil, 0, err
	}
	_, file := f.path(key)
	fh, err := os.Open(file)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, 0, fmt.Errorf("blob: fs: open %q: %w", key, ErrNotFound)
	}
	if err != nil {
		return nil, 0, fmt.Errorf("blob: fs: open %q: %w", key, err)
	}
	st, err := fh.Stat()
	if err != nil {
		_ = fh.Close()
		return nil, 0, fmt.Errorf("blob: fs: open %q: %w", key, err)
	}
	return fh, st.Size(), nil
}

// List implements Store. Temp and probe files are not keys and are skipped.
func (f *FS) List(ctx context.Context, fn func(key string, modified time.Time) error) error {
	shards, err := os.ReadDir(f.dir)
	if err != nil {
		return fmt.Errorf("blob: fs: list: %w", err)
	}
	for _, sh := range shards {
		if !sh.IsDir() {
			continue
		}
		ents, err := os.ReadDir(filepath.Join(f.dir, sh.Name()))
		if err != nil {
			return fmt.Errorf("blob: fs: list: %w", err)
		}
		for _, e := range ents {
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("blob: fs: list: %w", err)
			}
			if !e.Type().IsRegular() || ValidateKey(e.Name()) != nil {
				continue
			}
			info, err := e.Info()
			if errors.Is(err, fs.ErrNotExist) {
				continue // deleted since ReadDir
			}
			if err != nil {
				return fmt.Errorf("blob: fs: list: %w", err)
			}
			if err := fn(e.Name(), info.ModTime()); err != nil {
				return err
			}
		}
	}
	return nil
}

// Delete implements Store. The removal is not fsync'd: after a crash a deleted
// body may reappear, which only costs disk space.
func (f *FS) Delete(ctx context.Context, key string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("blob: fs: delete %q: %w", key, err)
	}
	if err := ValidateKey(key); err != nil {
		return err
	}
	_, file := f.path(key)
	if err := os.Remove(file); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("blob: fs: delete %q: %w", key, err)
	}
	return nil
}

// Check implements Store: the root must be a directory in which a file can be
// created and written.
func (f *FS) Check(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("blob: fs: check: %w", err)
	}
	st, err := os.Stat(f.dir)
	if err != nil {
		return fmt.Errorf("blob: fs: check: %w", err)
	}
	if !st.IsDir() {
		return fmt.Errorf("blob: fs: check: %s is not a directory", f.dir)
	}
	if f.group != nil {
		if err := f.group.Err(); err != nil {
			return fmt.Errorf("blob: fs: check: a flush to stable storage failed; restart to take bodies again: %w", err)
		}
	}
	probe, err := os.CreateTemp(f.dir, fsProbePattern)
	if err != nil {
		return fmt.Errorf("blob: fs: check: directory not writable: %w", err)
	}
	name := probe.Name()
	_, werr := probe.Write([]byte("ok"))
	cerr := probe.Close()
	rerr := os.Remove(name)
	if err := errors.Join(werr, cerr, rerr); err != nil {
		return fmt.Errorf("blob: fs: check: probe file %s: %w", name, err)
	}
	return nil
}

// Bootstrap creates the root and all shard directories. Idempotent and safe to
// run concurrently.
func (f *FS) Bootstrap(ctx context.Context) error {
	if err := os.MkdirAll(f.dir, fsDirPerm); err != nil {
		return fmt.Errorf("blob: fs: bootstrap: %w", err)
	}
	for i := range fsShards {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("blob: fs: bootstrap: %w", err)
		}
		if err := os.Mkdir(filepath.Join(f.dir, fmt.Sprintf("%02x", i)), fsDirPerm); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("blob: fs: bootstrap: %w", err)
		}
	}
	if f.fsync {
		if err := syncDir(f.dir); err != nil {
			return fmt.Errorf("blob: fs: bootstrap: %w", err)
		}
	}
	return nil
}

// mkdirShard creates a shard directory and makes its entry durable.
func (f *FS) mkdirShard(dir string) error {
	if err := os.MkdirAll(dir, fsDirPerm); err != nil {
		return fmt.Errorf("create shard directory: %w", err)
	}
	if f.fsync {
		return syncDir(f.dir)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open directory for fsync: %w", err)
	}
	serr := d.Sync()
	cerr := d.Close()
	if serr != nil {
		return fmt.Errorf("fsync directory %s: %w", dir, serr)
	}
	if cerr != nil {
		return fmt.Errorf("close directory %s: %w", dir, cerr)
	}
	return nil
}
