package delivery

import (
	"errors"
	"fmt"
	"net"
	"sync/atomic"
)

// ErrReplyTooLarge is returned by a read once a remote's reply has used up
// MaxReplyBytes: a hostile or broken server sending endless continuation
// lines (net/textproto joins them without a limit).
var ErrReplyTooLarge = errors.New("reply too large")

// replyTooLarge carries the limit for the log text.
type replyTooLarge struct{ max int }

func (e *replyTooLarge) Error() string { return fmt.Sprintf("reply exceeded %d bytes", e.max) }
func (e *replyTooLarge) Unwrap() error { return ErrReplyTooLarge }

// wireConn is the TCP connection to a remote as the SMTP client sees it. It
// bounds each reply: every write (a command, the body) gives the remote a
// fresh budget of max bytes to answer with, and a read beyond it fails, so
// a reply costs at most max bytes of memory and the connection is dropped.
// It also reports activity (any byte moved) for congestion detection.
type wireConn struct {
	net.Conn
	max      int64
	left     atomic.Int64
	activity atomic.Pointer[func()]
}

func newWireConn(c net.Conn, max int) *wireConn {
	w := &wireConn{Conn: c, max: int64(max)}
	w.left.Store(w.max)
	return w
}

func (w *wireConn) Read(p []byte) (int, error) {
	left := w.left.Load()
	if left <= 0 {
		return 0, &replyTooLarge{max: int(w.max)}
	}
	if int64(len(p)) > left {
		p = p[:left]
	}
	n, err := w.Conn.Read(p)
	if n > 0 {
		w.left.Add(-int64(n))
		w.touch()
	}
	return n, err
}

func (w *wireConn) Write(p []byte) (int, error) {
	w.left.Store(w.max)
	n, err := w.Conn.Write(p)
	if n > 0 {
		w.touch()
	}
	return n, err
}

func (w *wireConn) touch() {
	if f := w.activity.Load(); f != nil {
		(*f)()
	}
}

// setActivity makes f be called on every read or write (nil: none).
func (w *wireConn) setActivity(f func()) {
	if f == nil {
		w.activity.Store(nil)
		return
	}
	w.activity.Store(&f)
}

// renew gives the remote a fresh budget of max bytes, as a write does: a
// pipelined group is answered with one reply per command, each bounded.
func (w *wireConn) renew() { w.left.Store(w.max) }
