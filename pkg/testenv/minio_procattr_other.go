//go:build !linux

package testenv

import "syscall"

func minioSysProcAttr() *syscall.SysProcAttr { return nil }
