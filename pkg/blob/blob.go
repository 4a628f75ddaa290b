// Package blob stores message bodies by key. Ingress puts a body before it
// acknowledges a message; workers get it to deliver and delete it when done.
//
// Two implementations exist: FS (a local or mounted directory) and S3 (any
// S3-compatible object store, e.g. MinIO). Open picks one from a URL.
package blob

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"
)

// ErrNotFound is returned (possibly wrapped) by Get when the key is absent.
var ErrNotFound = errors.New("blob: not found")

// MaxKeyLen is the longest key a Store accepts.
const MaxKeyLen = 128

// Store holds message bodies by key. Keys are ASCII [A-Za-z0-9._-], at most
// MaxKeyLen chars ("." and ".." are rejected). Implementations are safe for
// concurrent use.
type Store interface {
	// Put stores data under key durably: when it returns nil the body survives
	// a crash of this process (fs: written to a temp file, fsync'd, renamed,
	// dir fsync'd; s3: PutObject returned OK). Put on an existing key
	// overwrites.
	Put(ctx context.Context, key string, data []byte) error
	// PutStream stores everything r yields under key, with Put's durability,
	// without holding the whole body in memory. It returns the number of
	// bytes stored. When r fails, nothing is stored under key (a previous
	// body under key is left as it was) and the error wraps r's.
	PutStream(ctx context.Context, key string, r io.Reader) (int64, error)
	// Get returns the body; errors.Is(err, ErrNotFound) when absent.
	Get(ctx context.Context, key string) ([]byte, error)
	// Open returns a reader of the body and its size; errors.Is(err,
	// ErrNotFound) when absent. The caller closes it.
	Open(ctx context.Context, key string) (io.ReadCloser, int64, error)
	// List calls fn for every stored key with its last-modified time, in no
	// particular order, until fn returns an error (which List returns).
	List(ctx context.Context, fn func(key string, modified time.Time) error) error
	// Delete removes key; deleting a missing key is not an error.
	Delete(ctx context.Context, key string) error
	// Check reports whether the store is reachable and writable enough to
	// accept mail (used for readiness probes); cheap.
	Check(ctx context.Context) error
}

// Bootstrapper is implemented by stores that need one-time setup (creating
// the S3 bucket, the fs directory tree). Bootstrap is idempotent and safe to
// run from several processes at once.
type Bootstrapper interface {
	Bootstrap(ctx context.Context) error
}

// Bootstrap creates what s needs (the S3 bucket if missing, the directory for
// fs). It is idempotent and safe to call from several pods at once. Stores that
// do not implement Bootstrapper need nothing and Bootstrap returns nil.
func Bootstrap(ctx context.Context, s Store) error {
	b, ok := s.(Bootstrapper)
	if !ok {
		return nil
	}
	return b.Bootstrap(ctx)
}

// ValidateKey returns an error naming the problem if key is not a valid key.
func ValidateKey(key string) error {
	if key == "" {
		return errors.New("blob: empty key")
	}
	if len(key) > MaxKeyLen {
		return fmt.Errorf("blob: key is %d bytes, longer than %d", len(key), MaxKeyLen)
	}
	if key == "." || key == ".." {
		return fmt.Errorf("blob: invalid key %q", key)
	}
	for i := 0; i < len(key); i++ {
		c := key[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '_', c == '-':
		default:
			return fmt.Errorf("blob: invalid byte %q at %d in key %q (allowed: A-Z a-z 0-9 . _ -)", c, i, key)
		}
	}
	return nil
}
