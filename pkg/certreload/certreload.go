// Package certreload serves a TLS certificate from PEM files and picks up a
// replaced pair (a cert-manager renewal, a Secret update, a certbot hook)
// at the next handshake, without a restart.
package certreload

import (
	"crypto/tls"
	"log/slog"
	"os"
	"sync"
	"syscall"
	"time"
)

// Stamp identifies one version of a file: a Kubernetes Secret update swaps
// a symlink (new inode), an in-place write changes the time or size. The
// inode matters where timestamps are coarse: two writes in the same tick
// with the same size differ only by it (when renamed into place).
type Stamp struct {
	mod   time.Time
	size  int64
	inode uint64
}

// StampOf stats path (following symlinks).
func StampOf(path string) (Stamp, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return Stamp{}, err
	}
	s := Stamp{mod: fi.ModTime(), size: fi.Size()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		s.inode = st.Ino
	}
	return s, nil
}

// Certificate is a certificate and key kept in step with their files.
type Certificate struct {
	certFile, keyFile string
	log               *slog.Logger

	mu       sync.Mutex
	cert     *tls.Certificate
	loaded   [2]Stamp // the files' stamps when cert was loaded
	failed   [2]Stamp // the stamps of a pair that did not load (logged once)
	reloaded int
}

// Load reads the pair; a bad pair at start is an error (the daemon does not
// start), a bad pair later keeps the last good certificate in service.
func Load(certFile, keyFile string, log *slog.Logger) (*Certificate, error) {
	c := &Certificate{certFile: certFile, keyFile: keyFile, log: log}
	st, err := c.stamps()
	if err != nil {
		return nil, err
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	c.cert, c.loaded = &cert, st
	return c, nil
}

func (c *Certificate) stamps() ([2]Stamp, error) {
	a, err := StampOf(c.certFile)
	if err != nil {
		return [2]Stamp{}, err
	}
	b, err := StampOf(c.keyFile)
	return [2]Stamp{a, b}, err
}

// GetCertificate is tls.Config.GetCertificate: the current certificate,
// re-read first when either file changed since it was loaded. Two stats per
// handshake; the files are read only when they changed.
func (c *Certificate) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	st, err := c.stamps()
	if err != nil || st == c.loaded || st == c.failed {
		// A file missing for a moment (mid-update) keeps the last good one.
		return c.cert, nil
	}
	cert, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
	if err != nil {
		// Often the two files are caught between updates (new certificate,
		// old key); the next change is tried again.
		c.failed = st
		if c.log != nil {
			c.log.Warn("TLS certificate changed but does not load; still serving the previous one", "cert", c.certFile, "key", c.keyFile, "err", err)
		}
		return c.cert, nil
	}
	c.cert, c.loaded, c.failed = &cert, st, [2]Stamp{}
	c.reloaded++
	if c.log != nil {
		attrs := []any{"cert", c.certFile}
		if leaf := cert.Leaf; leaf != nil {
			attrs = append(attrs, "subject", leaf.Subject.String(), "not_after", leaf.NotAfter)
		}
		c.log.Info("TLS certificate reloaded", attrs...)
	}
	return c.cert, nil
}

// Reloads counts the certificates loaded after the first (for tests and logs).
func (c *Certificate) Reloads() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.reloaded
}

// Config is a server tls.Config that serves c.
func (c *Certificate) Config() *tls.Config {
	return &tls.Config{GetCertificate: c.GetCertificate, MinVersion: tls.VersionTLS12}
}
