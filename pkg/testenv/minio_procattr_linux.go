package testenv

import "syscall"

// minioSysProcAttr makes the kernel kill MinIO if the test binary dies without
// running cleanups (e.g. go test -timeout panics).
func minioSysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
