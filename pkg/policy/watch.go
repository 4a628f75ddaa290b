package policy

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// maxFileSize bounds one policy file (a ConfigMap holds at most 1 MiB).
const maxFileSize = 8 << 20

// LoadDir reads and parses the policy files of dir: regular files or
// symlinks to them, as in a Kubernetes ConfigMap mount. Names starting with
// '.' (..data, ..2026_…) are ignored; missing keys are empty; other names are
// unknown keys and an error.
func LoadDir(dir string) (*Policy, error) {
	files, err := readDir(dir)
	if err != nil {
		return nil, err
	}
	return Parse(files)
}

// readDir reads a consistent snapshot of dir. In a ConfigMap mount the
// files live in dir/..data (a symlink the kubelet re-points atomically); the
// snapshot is read from its target and retried if it moved meanwhile.
func readDir(dir string) (map[string][]byte, error) {
	const attempts = 5
	for range attempts {
		data := filepath.Join(dir, "..data")
		target, err := os.Readlink(data)
		if err != nil {
			return readFlat(dir, dir)
		}
		base := target
		if !filepath.IsAbs(base) {
			base = filepath.Join(dir, target)
		}
		files, err := readFlat(dir, base)
		if now, lerr := os.Readlink(data); lerr == nil && now == target {
			return files, err
		}
	}
	return nil, fmt.Errorf("policy directory %s: ..data kept changing while reading", dir)
}

func readFlat(dir, base string) (map[string][]byte, error) {
	ents, err := os.ReadDir(base)
	if err != nil {
		return nil, fmt.Errorf("read policy directory %s: %w", dir, err)
	}
	files := map[string][]byte{}
	for _, e := range ents {
		name := e.Name()
		if strings.HasPrefix(name, ".") {
			continue
		}
		path := filepath.Join(base, name)
		fi, err := os.Stat(path) // follows symlinks
		if err != nil {
			return nil, fmt.Errorf("policy file %s: %w", filepath.Join(dir, name), err)
		}
		if !fi.Mode().IsRegular() {
			return nil, fmt.Errorf("policy file %s: not a regular file", filepath.Join(dir, name))
		}
		b, err := readLimited(path)
		if err != nil {
			return nil, fmt.Errorf("policy file %s: %w", filepath.Join(dir, name), err)
		}
		files[name] = b
	}
	return files, nil
}

func readLimited(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxFileSize {
		return nil, fmt.Errorf("larger than %d bytes", maxFileSize)
	}
	return b, nil
}

// Watcher holds the current policy of a directory and reloads it when the
// content changes. An update that does not parse is refused: the last good
// policy stays in force.
type Watcher struct {
	dir      string
	interval time.Duration
	onReload func(*Policy)
	onError  func(error)

	cur        atomic.Pointer[Policy]
	ok, failed atomic.Uint64

	mu      sync.Mutex // serializes polls
	badHash string     // content last reported through onError
}

// NewWatcher loads dir now (an error if that fails), then, once Run is
// called, polls it every interval and swaps in a new Policy when the content
// changed and parses. onReload is called after each successful swap; onError
// once per distinct bad content. Both may be nil.
func NewWatcher(dir string, interval time.Duration, onReload func(*Policy), onError func(error)) (*Watcher, error) {
	if interval <= 0 {
		interval = 10 * time.Second
	}
	p, err := LoadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("load policy: %w", err)
	}
	w := &Watcher{dir: dir, interval: interval, onReload: onReload, onError: onError}
	w.cur.Store(p)
	return w, nil
}

// Current returns the policy in force.
func (w *Watcher) Current() *Policy { return w.cur.Load() }

// Reloads returns the number of successful and refused reloads.
func (w *Watcher) Reloads() (ok, failed uint64) { return w.ok.Load(), w.failed.Load() }

// Run polls until ctx is done.
func (w *Watcher) Run(ctx context.Context) {
	t := time.NewTicker(w.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			w.poll()
		}
	}
}

// poll checks the directory once; it reports whether a new policy was
// swapped in.
func (w *Watcher) poll() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	files, err := readDir(w.dir)
	var hash string
	if err == nil {
		hash = version(files)
		if hash == w.cur.Load().Version {
			w.badHash = "" // back to the good content: report a new breakage again
			return false
		}
	} else {
		hash = "read:" + err.Error()
	}
	if hash == w.badHash {
		return false
	}
	var p *Policy
	if err == nil {
		p, err = Parse(files)
	}
	if err != nil {
		w.badHash = hash
		w.failed.Add(1)
		if w.onError != nil {
			w.onError(fmt.Errorf("policy %s not reloaded, keeping version %s: %w", w.dir, w.cur.Load().Version, err))
		}
		return false
	}
	w.badHash = ""
	w.cur.Store(p)
	w.ok.Add(1)
	if w.onReload != nil {
		w.onReload(p)
	}
	return true
}
