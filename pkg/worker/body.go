package worker

import (
	"context"
	"io"
	"sync"
)

// streamedBody is a stored body opened for one delivery. Its bytes count
// against the worker's in-flight budget from the remote's DATA go-ahead
// (open) until the transfer ends (Close); the body itself is streamed from
// the store through the SMTP writer, never held whole.
type streamedBody struct {
	w    *Worker
	ctx  context.Context
	rc   io.ReadCloser
	size int64

	once     sync.Once
	acquired int64
}

// open waits for room in the in-flight budget and hands out the body. A
// body larger than the whole budget takes all of it.
func (b *streamedBody) open() (io.ReadCloser, error) {
	n := min(max(b.size, 1), b.w.cfg.MaxBodyBytesInFlight)
	if err := b.w.inflight.Acquire(b.ctx, n); err != nil {
		return nil, err
	}
	b.acquired = n
	return b, nil
}

func (b *streamedBody) Read(p []byte) (int, error) { return b.rc.Read(p) }

// Close closes the body and gives its bytes back to the budget; it may be
// called more than once.
func (b *streamedBody) Close() error {
	var err error
	b.once.Do(func() {
		err = b.rc.Close()
		if b.acquired > 0 {
			b.w.inflight.Release(b.acquired)
		}
	})
	return err
}
