//go:build unix

package ctl

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// freeSpace reports the bytes and inodes available to this user on the
// file system holding dir, and its size.
func freeSpace(dir string) (free, inodes, total uint64, err error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, 0, 0, fmt.Errorf("statfs %s: %w", dir, err)
	}
	return st.Bavail * uint64(st.Bsize), uint64(st.Ffree), st.Blocks * uint64(st.Bsize), nil
}
