package smtptrace

import (
	"log/slog"
	"net"
	"testing"
	"time"
)

// BenchmarkWrap is the per-connection cost of the hook: with no trace
// running, and with traces running that do not match.
func BenchmarkWrap(b *testing.B) {
	c1, c2 := net.Pipe()
	defer c1.Close()
	defer c2.Close()
	w := NewWatcher(nil, slog.New(slog.DiscardHandler), "bench", DefaultLimits())
	b.Run("no-traces", func(b *testing.B) {
		for b.Loop() {
			if w.Wrap(c1, Ingress, "192.0.2.1:1234", "") != c1 {
				b.Fatal("traced")
			}
		}
	})
	now := time.Now()
	set := map[string]Setting{}
	for _, id := range []string{"a", "b", "c", "d", "e", "f", "g", "h"} {
		set[id] = Setting{ID: id, Client: "10.9.0.0/16", Created: now, Until: now.Add(time.Hour)}
	}
	w.publish(set)
	b.Run("8-traces-no-match", func(b *testing.B) {
		for b.Loop() {
			if w.Wrap(c1, Ingress, "192.0.2.1:1234", "") != c1 {
				b.Fatal("traced")
			}
		}
	})
}
