package smtp

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
)

type EnhancedCode [3]int

// SMTPError specifies the error code, enhanced error code (if any) and
// message returned by the server.
type SMTPError struct {
	Code         int
	EnhancedCode EnhancedCode
	Message      string
}

// NoEnhancedCode is used to indicate that enhanced error code should not be
// included in response.
//
// Note that RFC 2034 requires an enhanced code to be included in all 2xx, 4xx
// and 5xx responses. This constant is exported for use by extensions, you
// should probably use EnhancedCodeNotSet instead.
var NoEnhancedCode = EnhancedCode{-1, -1, -1}

// EnhancedCodeNotSet is a nil value of EnhancedCode field in SMTPError, used
// to indicate that backend failed to provide enhanced status code. X.0.0 will
// be used (X is derived from error code).
var EnhancedCodeNotSet = EnhancedCode{0, 0, 0}

func (err *SMTPError) Error() string {
	s := fmt.Sprintf("SMTP error %03d", err.Code)
	if err.Message != "" {
		s += ": " + err.Message
	}
	return s
}

func (err *SMTPError) Temporary() bool {
	return err.Code/100 == 4
}

var ErrDataTooLarge = &SMTPError{
	Code:         552,
	EnhancedCode: EnhancedCode{5, 3, 4},
	Message:      "Maximum message size exceeded",
}

type dataReader struct {
	r     *bufio.Reader
	state int

	limited bool
	n       int64 // Maximum bytes remaining
}

func newDataReader(c *Conn) *dataReader {
	dr := &dataReader{
		r: c.text.R,
	}

	if c.server.MaxMessageBytes > 0 {
		dr.limited = true
		dr.n = int64(c.server.MaxMessageBytes)
	}

	return dr
}

// Read states of dataReader. The machine is net/textproto's dotReader with
// one change: CRLF is not rewritten to LF.
const (
	stateBeginLine = iota // beginning of line; initial state; must be zero
	stateDot              // read . at beginning of line
	stateDotCR            // read .\r at beginning of line
	stateCR               // read \r (possibly at end of line)
	stateData             // reading data in middle of line
	stateEOF              // reached .\r\n end marker line
)

// dataStep is one byte of the DATA state machine: the state after c, and
// whether c is part of the body (false for a stuffed dot and the end
// marker's). The server's reader (Read) and DataEnd both run on it.
func dataStep(state int, c byte) (next int, keep bool) {
	switch state {
	case stateBeginLine:
		switch c {
		case '.':
			return stateDot, false
		case '\r':
			return stateCR, true
		}
	case stateDot:
		if c == '\r' {
			return stateDotCR, false
		}
	case stateDotCR:
		if c == '\n' {
			return stateEOF, false
		}
	case stateCR:
		if c == '\n' {
			return stateBeginLine, true
		}
	case stateData:
		if c == '\r' {
			return stateCR, true
		}
	case stateEOF:
		return stateEOF, false
	}
	return stateData, true
}

// NewDataReader returns the reader the server gives Session.Data (mailfwd
// patch 14), without the size limit, over r positioned after the 354
// reply: it dot-unstuffs, returns io.EOF after the <CR><LF>.<CR><LF> end
// marker and leaves what follows unread in r.
func NewDataReader(r *bufio.Reader) io.Reader { return &dataReader{r: r} }

// DataEnd finds the end of a DATA body in a stream observed in pieces
// (mailfwd patch 14: the live trace of the connection), by the server's
// own rule: only <CR><LF>.<CR><LF> ends it (the body's first line counts
// as after <CR><LF>); a "." line ended by a bare LF is body. The zero
// value is at the start of a body.
type DataEnd struct{ state int }

// Scan consumes the body bytes at the start of p and returns how many it
// took; ended is true when those end with the end marker (the rest of p is
// not body). After the end it takes nothing until Reset.
func (d *DataEnd) Scan(p []byte) (n int, ended bool) {
	for n < len(p) && d.state != stateEOF {
		if d.state == stateData {
			// Only '\r' leaves stateData.
			j := bytes.IndexByte(p[n:], '\r')
			if j < 0 {
				return len(p), false
			}
			n += j + 1
			d.state = stateCR
			continue
		}
		d.state, _ = dataStep(d.state, p[n])
		n++
	}
	return n, d.state == stateEOF
}

// Reset starts a new body.
func (d *DataEnd) Reset() { d.state = stateBeginLine }

// Read dot-unstuffs the DATA stream and stops after the <CR><LF>.<CR><LF>
// end marker, leaving what follows it (the next command) unread.
//
// It runs the same state machine as net/textproto's dotReader, but on the
// bytes bufio.Reader already holds rather than one ReadByte at a time: in
// the middle of a line everything up to the next '\r' is copied at once.
// It asks the bufio.Reader for more only when its buffer is empty, exactly
// when ReadByte would, so the reads from the connection (and so the line
// length limit below the bufio.Reader) are the same as byte by byte.
func (r *dataReader) Read(b []byte) (n int, err error) {
	if r.limited {
		if r.n <= 0 {
			return 0, ErrDataTooLarge
		}
		if int64(len(b)) > r.n {
			b = b[0:r.n]
		}
	}

	for n < len(b) && r.state != stateEOF {
		if r.r.Buffered() == 0 {
			// Fills the buffer as ReadByte does: it returns data or an error.
			if _, err = r.r.Peek(1); err != nil {
				if err == io.EOF {
					err = io.ErrUnexpectedEOF
				}
				break
			}
		}
		buf, _ := r.r.Peek(r.r.Buffered())
		i := 0
		for i < len(buf) && n < len(b) && r.state != stateEOF {
			if r.state == stateData {
				// Only '\r' leaves stateData: copy the run up to it.
				run := buf[i:]
				if room := len(b) - n; len(run) > room {
					run = run[:room]
				}
				if j := bytes.IndexByte(run, '\r'); j >= 0 {
					run = run[:j+1]
					r.state = stateCR
				}
				n += copy(b[n:], run)
				i += len(run)
				continue
			}
			c := buf[i]
			i++
			var keep bool
			if r.state, keep = dataStep(r.state, c); keep {
				b[n] = c
				n++
			}
		}
		r.r.Discard(i)
	}
	if err == nil && r.state == stateEOF {
		err = io.EOF
	}

	if r.limited {
		r.n -= int64(n)
	}
	return
}
