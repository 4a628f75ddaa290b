package delivery

import (
	"bytes"
	"io"
)

// DefaultLineLengthLimit is Config.LineLengthLimit's default: RFC 5322
// §2.1.1's 998 characters, CRLF not counted (Postfix's
// smtp_line_length_limit default since 2.9).
const DefaultLineLengthLimit = 998

// foldWriter breaks lines longer than max octets (the line ending not
// counted) by inserting CRLF and a space, as Postfix's SMTP client does
// with smtp_line_length_limit ("to minimize the damage to MIME formatted
// mail"): the continuation line starts with the space, which counts
// against the limit (max <= 0: no folding). Shorter lines pass unchanged, and the bytes are
// written as runs, never one by one. A CR at the end of a Write is held
// back until the next byte shows whether it ends the line; Flush writes
// it.
type foldWriter struct {
	w   io.Writer
	max int
	n   int  // octets on the current line so far
	cr  bool // a CR held back
}

var foldBreak = []byte("\r\n ")

// newFoldWriter folds at max (max <= 0: no folding). Either way a bare LF
// is sent as CRLF, as the DATA writer does: the bytes that arrive are the
// same whether the body goes by DATA or by BDAT.
func newFoldWriter(w io.Writer, max int) *foldWriter {
	return &foldWriter{w: w, max: max}
}

var crlf = []byte("\r\n")

func (f *foldWriter) Write(p []byte) (int, error) {
	total := len(p)
	for len(p) > 0 {
		if f.cr {
			f.cr = false
			if p[0] == '\n' {
				if _, err := f.w.Write(crlf); err != nil {
					return total - len(p), err
				}
				f.n = 0
				p = p[1:]
				continue
			}
			if err := f.content([]byte{'\r'}); err != nil {
				return total - len(p), err
			}
		}
		lf := bytes.IndexByte(p, '\n')
		if lf < 0 {
			seg := p
			if seg[len(seg)-1] == '\r' {
				f.cr = true
				seg = seg[:len(seg)-1]
			}
			if err := f.content(seg); err != nil {
				return total - len(p), err
			}
			return total, nil
		}
		line := p[:lf] // CRLF or a bare LF ends the line
		if lf > 0 && p[lf-1] == '\r' {
			line = p[:lf-1]
		}
		if err := f.content(line); err != nil {
			return total - len(p), err
		}
		if _, err := f.w.Write(crlf); err != nil {
			return total - len(p), err
		}
		f.n = 0
		p = p[lf+1:]
	}
	return total, nil
}

// content writes octets of the current line, breaking it at max.
func (f *foldWriter) content(b []byte) error {
	for f.max > 0 && f.n+len(b) > f.max {
		k := f.max - f.n
		if _, err := f.w.Write(b[:k]); err != nil {
			return err
		}
		if _, err := f.w.Write(foldBreak); err != nil {
			return err
		}
		b, f.n = b[k:], 1
	}
	if len(b) == 0 {
		return nil
	}
	_, err := f.w.Write(b)
	f.n += len(b)
	return err
}

// Flush writes a CR held back (the body ended in a bare CR).
func (f *foldWriter) Flush() error {
	if !f.cr {
		return nil
	}
	f.cr = false
	return f.content([]byte{'\r'})
}
