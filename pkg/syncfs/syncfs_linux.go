package syncfs

import (
	"os"

	"golang.org/x/sys/unix"
)

// Flusher returns a flush of the whole filesystem holding dir: one
// syncfs(2) writes back every dirty file and directory entry on it. The
// second function releases the directory.
func Flusher(dir string) (func() error, func(), error) {
	d, err := os.Open(dir)
	if err != nil {
		return nil, nil, err
	}
	// The closure holds d itself, not just its descriptor, so that the
	// file is not finalized (and the descriptor closed) under us.
	return func() error { return unix.Syncfs(int(d.Fd())) }, func() { d.Close() }, nil
}
