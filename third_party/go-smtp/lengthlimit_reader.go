package smtp

import (
	"bytes"
	"errors"
	"io"
)

var ErrTooLongLine = errors.New("smtp: too long a line in input stream")

// lineLimitReader reads from the underlying Reader but restricts
// line length of lines in input stream to a certain length.
//
// If line length exceeds the limit - Read returns ErrTooLongLine
type lineLimitReader struct {
	R         io.Reader
	LineLimit int

	curLineLength int
}

func (r *lineLimitReader) Read(b []byte) (int, error) {
	if r.curLineLength > r.LineLimit && r.LineLimit > 0 {
		return 0, ErrTooLongLine
	}

	n, err := r.R.Read(b)
	if err != nil {
		return n, err
	}

	if r.LineLimit == 0 {
		return n, nil
	}

	if r.LineLimit < 0 {
		// Every byte is too many; keep the byte-by-byte count.
		for _, chr := range b[:n] {
			if chr == '\n' {
				r.curLineLength = 0
			}
			r.curLineLength++

			if r.curLineLength > r.LineLimit {
				return 0, ErrTooLongLine
			}
		}
		return n, nil
	}

	// Count line lengths from one '\n' to the next, as the byte-by-byte
	// count did: a '\n' counts as the first byte of the next line, and on
	// an overflow curLineLength is left at LineLimit+1.
	for p := b[:n]; ; {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			if r.curLineLength+len(p) > r.LineLimit {
				r.curLineLength = r.LineLimit + 1
				return 0, ErrTooLongLine
			}
			r.curLineLength += len(p)
			return n, nil
		}
		if r.curLineLength+i > r.LineLimit {
			r.curLineLength = r.LineLimit + 1
			return 0, ErrTooLongLine
		}
		r.curLineLength = 1
		p = p[i+1:]
	}
}
