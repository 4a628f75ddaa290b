//go:build !unix

package ctl

import "errors"

func freeSpace(string) (free, inodes, total uint64, err error) {
	return 0, 0, 0, errors.New("free space is only checked on Unix systems")
}
