package policy

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// writeConfigMap lays out files the way the kubelet mounts a ConfigMap:
// dir/..<ts>/key, dir/..data -> ..<ts> (re-pointed atomically by rename),
// dir/key -> ..data/key.
func writeConfigMap(t *testing.T, dir, ts string, files map[string]string) {
	t.Helper()
	tsDir := filepath.Join(dir, "..2026_"+ts)
	if err := os.Mkdir(tsDir, 0o755); err != nil {
		t.Fatal(err)
	}
	for k, v := range files {
		if err := os.WriteFile(filepath.Join(tsDir, k), []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	tmp := filepath.Join(dir, "..data_tmp")
	if err := os.Symlink("..2026_"+ts, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	// Top-level links: add new keys, drop removed ones.
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), ".") {
			if _, ok := files[e.Name()]; !ok {
				os.Remove(filepath.Join(dir, e.Name()))
			}
		}
	}
	for k := range files {
		link := filepath.Join(dir, k)
		if _, err := os.Lstat(link); err == nil {
			continue
		}
		if err := os.Symlink(filepath.Join("..data", k), link); err != nil {
			t.Fatal(err)
		}
	}
}

func relays(p *Policy, rcpt string) bool {
	return p.CheckRcpt(Client{Addr: netip.MustParseAddr("198.51.100.1")}, "a@b.example", rcpt).Reject == nil
}

func TestLoadDir(t *testing.T) {
	t.Run("kubernetes ConfigMap mount", func(t *testing.T) {
		dir := t.TempDir()
		writeConfigMap(t, dir, "01", map[string]string{"access": "To:example.com RELAY\n", "settings": "from_whitelist = false\n"})
		p, err := LoadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		if !relays(p, "u@example.com") || relays(p, "u@example.org") {
			t.Fatal("policy from ConfigMap mount not applied")
		}
		if p.Version != mustParse(t, map[string]string{"access": "To:example.com RELAY\n", "settings": "from_whitelist = false\n"}).Version {
			t.Error("LoadDir Version differs from Parse Version of the same files")
		}
	})
	t.Run("plain directory", func(t *testing.T) {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, "access"), []byte("To:example.org RELAY\n"), 0o644)
		os.WriteFile(filepath.Join(dir, ".hidden"), []byte("garbage"), 0o644)
		os.Mkdir(filepath.Join(dir, ".git"), 0o755)
		target := filepath.Join(t.TempDir(), "lhn")
		os.WriteFile(target, []byte("local.example\n"), 0o644)
		os.Symlink(target, filepath.Join(dir, "local-host-names"))
		p, err := LoadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		if !relays(p, "u@example.org") || !p.IsLocal("local.example") {
			t.Fatal("plain directory not applied")
		}
	})
	t.Run("unknown file is an error", func(t *testing.T) {
		dir := t.TempDir()
		os.WriteFile(filepath.Join(dir, "acces"), []byte("To:example.org RELAY\n"), 0o644)
		if _, err := LoadDir(dir); err == nil || !strings.Contains(err.Error(), `unknown policy key "acces"`) {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("directory entry is an error", func(t *testing.T) {
		dir := t.TempDir()
		os.Mkdir(filepath.Join(dir, "access"), 0o755)
		if _, err := LoadDir(dir); err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("missing directory", func(t *testing.T) {
		if _, err := LoadDir(filepath.Join(t.TempDir(), "nope")); err == nil {
			t.Fatal("no error")
		}
	})
}

type recorder struct {
	mu      sync.Mutex
	reloads []*Policy
	errs    []error
}

func (r *recorder) reload(p *Policy) { r.mu.Lock(); r.reloads = append(r.reloads, p); r.mu.Unlock() }
func (r *recorder) fail(err error)   { r.mu.Lock(); r.errs = append(r.errs, err); r.mu.Unlock() }
func (r *recorder) counts() (int, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.reloads), len(r.errs)
}

func TestWatcherReloadAndKeepLastGood(t *testing.T) {
	dir := t.TempDir()
	writeConfigMap(t, dir, "01", map[string]string{"access": "To:one.example RELAY\n"})
	rec := &recorder{}
	w, err := NewWatcher(dir, time.Hour, rec.reload, rec.fail)
	if err != nil {
		t.Fatal(err)
	}
	if !relays(w.Current(), "u@one.example") {
		t.Fatal("initial policy not loaded")
	}
	check := func(step string, swapped, wantSwap bool, okN, failN uint64, reloads, errs int) {
		t.Helper()
		if swapped != wantSwap {
			t.Fatalf("%s: swapped = %v", step, swapped)
		}
		if o, f := w.Reloads(); o != okN || f != failN {
			t.Fatalf("%s: Reloads() = %d, %d; want %d, %d", step, o, f, okN, failN)
		}
		if r, e := rec.counts(); r != reloads || e != errs {
			t.Fatalf("%s: callbacks reload %d error %d; want %d %d", step, r, e, reloads, errs)
		}
	}
	check("unchanged", w.poll(), false, 0, 0, 0, 0)

	writeConfigMap(t, dir, "02", map[string]string{"access": "To:two.example RELAY\n", "local-host-names": "local.example\n"})
	check("valid update", w.poll(), true, 1, 0, 1, 0)
	p2 := w.Current()
	if !relays(p2, "u@two.example") || relays(p2, "u@one.example") || !p2.IsLocal("local.example") {
		t.Fatal("update not applied")
	}
	if rec.reloads[0] != p2 {
		t.Fatal("onReload got a different policy than Current")
	}

	// One bad file in the set: nothing of the update applies.
	writeConfigMap(t, dir, "03", map[string]string{"access": "To:three.example RELAY\n", "aliases": "x: |/bin/sh\n"})
	check("bad update", w.poll(), false, 1, 1, 1, 1)
	if w.Current() != p2 || relays(w.Current(), "u@three.example") {
		t.Fatal("bad update was (half) applied")
	}
	if err := rec.errs[0]; !strings.Contains(err.Error(), "aliases:1:") || !strings.Contains(err.Error(), p2.Version) {
		t.Fatalf("onError got %v", err)
	}
	var pe *ParseError
	if !errors.As(rec.errs[0], &pe) {
		t.Fatalf("onError error %T does not wrap a *ParseError", rec.errs[0])
	}
	check("same bad content again", w.poll(), false, 1, 1, 1, 1)

	writeConfigMap(t, dir, "04", map[string]string{"access": "To:four.example RELAYY\n"})
	check("different bad content", w.poll(), false, 1, 2, 1, 2)

	writeConfigMap(t, dir, "05", map[string]string{"access": "To:five.example RELAY\n"})
	check("fixed", w.poll(), true, 2, 2, 2, 2)
	if !relays(w.Current(), "u@five.example") || w.Current().IsLocal("local.example") {
		t.Fatal("fixed update not applied (or removed key still in force)")
	}
}

func TestNewWatcherFailsOnBadInitialContent(t *testing.T) {
	dir := t.TempDir()
	writeConfigMap(t, dir, "01", map[string]string{"access": "To:one.example RELAYY\n"})
	if w, err := NewWatcher(dir, time.Second, nil, nil); err == nil || w != nil || !strings.Contains(err.Error(), "access:1:") {
		t.Fatalf("NewWatcher = %v, %v", w, err)
	}
}

// Run picks up a ConfigMap swap by itself while readers use Current.
func TestWatcherRun(t *testing.T) {
	dir := t.TempDir()
	writeConfigMap(t, dir, "01", map[string]string{"access": "To:one.example RELAY\n"})
	reloaded := make(chan *Policy, 4)
	w, err := NewWatcher(dir, 10*time.Millisecond, func(p *Policy) { reloaded <- p }, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); w.Run(ctx) }()
	go func() {
		defer wg.Done()
		for i := 0; i < 100000 && ctx.Err() == nil; i++ {
			if w.Current() == nil {
				t.Error("Current() = nil")
				return
			}
		}
	}()
	writeConfigMap(t, dir, "02", map[string]string{"access": "To:two.example RELAY\n"})
	select {
	case p := <-reloaded:
		if !relays(p, "u@two.example") || w.Current() != p {
			t.Error("reloaded policy not in force")
		}
	case <-time.After(30 * time.Second):
		t.Error("no reload within 30s")
	}
	cancel()
	wg.Wait()
	if ok, failed := w.Reloads(); ok != 1 || failed != 0 {
		t.Errorf("Reloads() = %d, %d", ok, failed)
	}
}
