package smtp

// mailfwd patch 15: a mail transaction sent as one group of commands
// (RFC 2920 PIPELINING), with DATA or with the body as BDAT chunks
// (RFC 3030 CHUNKING).

import (
	"errors"
	"fmt"
	"net/textproto"
	"time"
)

// ErrPipelineReply is wrapped by the error of MailPipelined and MailBdat
// when the server's replies do not fit the group sent: a reply of the wrong
// class (a 3xx to MAIL or RCPT, a 2xx to DATA, a 354 to BDAT), or bytes
// already waiting after the group's last reply (more replies than
// commands). The replies read before cannot be attributed safely; the
// connection must be closed.
var ErrPipelineReply = errors.New("smtp: replies do not match the pipelined commands")

// BdatChunkSize is the largest BDAT chunk MailBdat sends.
const BdatChunkSize = 64 << 10

// PipelineReplies are the replies to a pipelined transaction, in the order
// of the commands. A nil entry is a positive reply; otherwise it is an
// *SMTPError.
type PipelineReplies struct {
	// Mail is MAIL FROM's reply.
	Mail error
	// Rcpt has one entry per RCPT TO whose reply was read: when the
	// exchange broke off, it is shorter than the recipient list.
	Rcpt []error
	// Data is the reply to DATA (MailPipelined: nil for 354) or to the
	// last BDAT chunk (MailBdat: nil for 250; the reply to a failed earlier
	// chunk when one failed).
	Data error
	// DataRead reports whether Data holds a reply that was read.
	DataRead bool
	// Text is the text of the last BDAT chunk's 250 reply (MailBdat).
	Text string
	// Read is the number of replies read.
	Read int
}

// MailPipelined sends MAIL FROM, one RCPT TO per address in to and DATA in
// one write, then reads the replies in order (RFC 2920; the caller checks
// that the server advertises PIPELINING). When MAIL and at least one RCPT
// were accepted and DATA was answered 354, it returns the writer of the
// body, to be closed as the one Data returns. A 354 when nothing else was
// accepted is a server fault: the body is then not sent, and the error
// wraps ErrPipelineReply.
//
// err is set when the connection failed or a reply was malformed or out of
// place: replies holds what was read up to then (each RCPT's outcome is
// known only for the entries present), and the connection is not usable.
func (c *Client) MailPipelined(from string, opts *MailOptions, to []string) (*PipelineReplies, *DataCommand, error) {
	if err := c.hello(); err != nil {
		return nil, nil, err
	}
	if err := c.writeGroup(from, opts, to, "DATA\r\n"); err != nil {
		return &PipelineReplies{}, nil, err
	}
	r, err := c.readGroup(len(to))
	if err != nil {
		return r, nil, err
	}
	code, msg, err := c.readReply(c.CommandTimeout)
	if code != 0 {
		r.Read++
	}
	switch {
	case code == 354:
	case isReply(err, 4, 5):
		r.Data, r.DataRead = err, true
		return r, nil, c.nothingPending()
	case err == nil || isReply(err, 3):
		return r, nil, fmt.Errorf("%w: %d %s to DATA", ErrPipelineReply, code, msg)
	default:
		return r, nil, err
	}
	if !r.accepted() {
		// RFC 2920 §3.1: the server should have refused DATA.
		return r, nil, fmt.Errorf("%w: 354 to DATA with no recipient accepted", ErrPipelineReply)
	}
	r.DataRead = true
	if err := c.nothingPending(); err != nil {
		return r, nil, err
	}
	c.rcpts = acceptedRcpts(to, r.Rcpt)
	c.dot = &dotWriter{c: c, w: c.text.W}
	return r, &DataCommand{client: c, wc: c.dot}, nil
}

// MailBdat starts a transaction whose body is sent as BDAT chunks
// (RFC 3030 CHUNKING) pipelined with MAIL FROM and one RCPT TO per address
// in to (RFC 2920; the caller checks that the server advertises PIPELINING
// and CHUNKING). What is written to the BdatWriter goes out in chunks of
// BdatChunkSize bytes, the first one in the same write as MAIL and the
// RCPTs; Close sends the rest with LAST and then reads every reply, in
// order. The body is sent as it is: no dot stuffing, and its lines must
// already end in CRLF.
//
// The body is sent even when MAIL or every RCPT fails (the server reads and
// discards the chunks, RFC 3030 §2). A writer abandoned before Close leaves
// the connection inside a transfer: the caller must close the connection,
// and the server discards what it got.
func (c *Client) MailBdat(from string, opts *MailOptions, to []string) (*BdatWriter, error) {
	if err := c.hello(); err != nil {
		return nil, err
	}
	group, err := c.groupLines(from, opts, to)
	if err != nil {
		return nil, err
	}
	c.closeDot()
	return &BdatWriter{c: c, group: group, rcpts: len(to), buf: make([]byte, 0, BdatChunkSize)}, nil
}

// BdatWriter is the body of a transaction started by MailBdat.
type BdatWriter struct {
	c      *Client
	group  []byte // MAIL and RCPT lines, until the first chunk is sent
	rcpts  int
	buf    []byte
	chunks int
	err    error
}

// Write buffers p and sends every full chunk.
func (w *BdatWriter) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	n := 0
	for len(p) > 0 {
		k := cap(w.buf) - len(w.buf)
		if k > len(p) {
			k = len(p)
		}
		w.buf = append(w.buf, p[:k]...)
		p, n = p[k:], n+k
		if len(w.buf) == cap(w.buf) {
			if w.err = w.send(false); w.err != nil {
				return n, w.err
			}
		}
	}
	return n, nil
}

func (w *BdatWriter) send(last bool) error {
	c := w.c
	c.conn.SetDeadline(time.Now().Add(c.SubmissionTimeout))
	defer c.conn.SetDeadline(time.Time{})
	if w.group != nil {
		c.text.W.Write(w.group)
		w.group = nil
	}
	c.text.W.WriteString(bdatLine(len(w.buf), last))
	c.text.W.Write(w.buf)
	w.buf = w.buf[:0]
	w.chunks++
	if last {
		return c.text.W.Flush()
	}
	// A write error is sticky in the bufio.Writer: report it now.
	_, err := c.text.W.Write(nil)
	return err
}

// Close sends the last chunk and reads the replies to MAIL, each RCPT and
// each chunk. err is as for MailPipelined; replies.Data is the first failed
// chunk's reply, or nil when the last was answered 250 (its text in
// replies.Text).
func (w *BdatWriter) Close() (*PipelineReplies, error) {
	if w.err != nil {
		return &PipelineReplies{}, w.err
	}
	w.err = errors.New("smtp: BDAT writer closed twice")
	if err := w.send(true); err != nil {
		return &PipelineReplies{}, err
	}
	c := w.c
	r, err := c.readGroup(w.rcpts)
	if err != nil {
		return r, err
	}
	// One reply per chunk; the first failure is the transaction's.
	for i := 0; i < w.chunks; i++ {
		code, msg, err := c.readReply(c.SubmissionTimeout)
		if code != 0 {
			r.Read++
		}
		switch {
		case err == nil:
			if i == w.chunks-1 && r.Data == nil {
				r.Text = msg
			}
		case isReply(err, 4, 5):
			if r.Data == nil {
				r.Data = err
			}
		case isReply(err, 3):
			return r, fmt.Errorf("%w: %d %s to BDAT", ErrPipelineReply, code, msg)
		default:
			return r, err
		}
	}
	r.DataRead = true
	if r.Data == nil && !r.accepted() {
		return r, fmt.Errorf("%w: BDAT accepted with no recipient accepted", ErrPipelineReply)
	}
	if err := c.nothingPending(); err != nil {
		return r, err
	}
	c.rcpts = nil
	return r, nil
}

func bdatLine(n int, last bool) string {
	if last {
		return fmt.Sprintf("BDAT %d LAST\r\n", n)
	}
	return fmt.Sprintf("BDAT %d\r\n", n)
}

// groupLines returns the MAIL line and a RCPT line per address, each
// ending in CRLF.
func (c *Client) groupLines(from string, opts *MailOptions, to []string) ([]byte, error) {
	mail, err := c.mailLine(from, opts)
	if err != nil {
		return nil, err
	}
	b := make([]byte, 0, 64*(len(to)+1))
	b = append(append(b, mail...), "\r\n"...)
	for _, addr := range to {
		line, err := c.rcptLine(addr, nil)
		if err != nil {
			return nil, err
		}
		b = append(append(b, line...), "\r\n"...)
	}
	return b, nil
}

// writeGroup writes MAIL, the RCPTs and tail in one flush.
func (c *Client) writeGroup(from string, opts *MailOptions, to []string, tail string) error {
	group, err := c.groupLines(from, opts, to)
	if err != nil {
		return err
	}
	c.closeDot()
	c.conn.SetDeadline(time.Now().Add(c.CommandTimeout))
	defer c.conn.SetDeadline(time.Time{})
	c.text.W.Write(group)
	c.text.W.WriteString(tail)
	return c.text.W.Flush() // an error of the writes above is sticky
}

// readGroup reads the replies to MAIL and len(to) RCPTs.
func (c *Client) readGroup(rcpts int) (*PipelineReplies, error) {
	r := &PipelineReplies{Rcpt: make([]error, 0, rcpts)}
	code, msg, err := c.readReply(c.CommandTimeout)
	if code != 0 {
		r.Read++
	}
	switch {
	case err == nil:
	case isReply(err, 4, 5):
		r.Mail = err
	case isReply(err, 3):
		return r, fmt.Errorf("%w: %s to MAIL", ErrPipelineReply, msg)
	default:
		return r, err
	}
	for i := 0; i < rcpts; i++ {
		code, msg, err := c.readReply(c.CommandTimeout)
		if code != 0 {
			r.Read++
		}
		switch {
		case err == nil:
		case isReply(err, 4, 5):
		case isReply(err, 3):
			return r, fmt.Errorf("%w: %s to RCPT", ErrPipelineReply, msg)
		default:
			return r, err
		}
		r.Rcpt = append(r.Rcpt, err)
	}
	return r, nil
}

// readReply reads one reply within timeout: err is nil for a 2xx, an
// *SMTPError for any other code (the caller decides what fits), or the
// error of the connection or of a malformed reply.
func (c *Client) readReply(timeout time.Duration) (int, string, error) {
	if c.ReplyStart != nil {
		c.ReplyStart()
	}
	c.conn.SetDeadline(time.Now().Add(timeout))
	defer c.conn.SetDeadline(time.Time{})
	code, msg, err := c.text.ReadResponse(0)
	if err != nil {
		return 0, msg, err // not a reply: the connection failed or the line is malformed
	}
	switch code / 100 {
	case 2:
		return code, msg, nil
	case 3, 4, 5:
		return code, msg, toSMTPErr(&textproto.Error{Code: code, Msg: msg})
	}
	return code, msg, fmt.Errorf("%w: reply code %d", ErrPipelineReply, code)
}

// isReply reports whether err is a reply of one of the classes (first digit).
func isReply(err error, classes ...int) bool {
	se, ok := err.(*SMTPError)
	if !ok {
		return false
	}
	for _, cl := range classes {
		if se.Code/100 == cl {
			return true
		}
	}
	return false
}

func (r *PipelineReplies) accepted() bool {
	if r.Mail != nil {
		return false
	}
	for _, e := range r.Rcpt {
		if e == nil {
			return true
		}
	}
	return false
}

func acceptedRcpts(to []string, errs []error) []string {
	var ok []string
	for i, e := range errs {
		if e == nil {
			ok = append(ok, to[i])
		}
	}
	return ok
}

// nothingPending fails when the server has sent more than the replies
// expected: bytes buffered or already waiting on the connection (a read
// with a deadline in the past finds them without waiting).
func (c *Client) nothingPending() error {
	if c.text.R.Buffered() > 0 {
		return fmt.Errorf("%w: more replies than commands", ErrPipelineReply)
	}
	c.conn.SetReadDeadline(time.Now().Add(-time.Second))
	_, err := c.text.R.Peek(1)
	c.conn.SetReadDeadline(time.Time{})
	var te interface{ Timeout() bool }
	switch {
	case err == nil:
		return fmt.Errorf("%w: more replies than commands", ErrPipelineReply)
	case errors.As(err, &te) && te.Timeout():
		return nil
	default:
		return err
	}
}
