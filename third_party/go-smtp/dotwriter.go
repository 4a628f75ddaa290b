package smtp

import (
	"bufio"
	"bytes"
)

// Write states of dotWriter, as in net/textproto's dotWriter.
const (
	wstateBegin     = iota // initial state; must be zero
	wstateBeginLine        // beginning of line
	wstateCR               // wrote \r (possibly at end of line)
	wstateData             // writing data in middle of line
)

// dotWriter is net/textproto's DotWriter (the DATA body writer: a '.' is
// added at the start of each line that begins with one, a bare LF is sent
// as CRLF, and Close ends the body with CRLF.CRLF) writing runs of bytes
// rather than one WriteByte call per byte. The bytes it sends are those
// textproto's sends.
type dotWriter struct {
	c     *Client // or nil; Client.cmd closes an open dotWriter first
	w     *bufio.Writer
	state int
}

func (d *dotWriter) Write(b []byte) (n int, err error) {
	for n < len(b) {
		if d.state == wstateBegin || d.state == wstateBeginLine {
			if b[n] == '.' {
				d.w.WriteByte('.') // an error is sticky: the next write returns it
			}
			d.state = wstateData
		}
		// The state is wstateData or wstateCR. Up to the next '\n' no byte
		// is added; only the state at that '\n' matters.
		seg := b[n:]
		lf := bytes.IndexByte(seg, '\n')
		if lf >= 0 {
			seg = seg[:lf]
		}
		if len(seg) > 0 {
			crs := 0 // '\r's at the end of seg
			for crs < len(seg) && seg[len(seg)-1-crs] == '\r' {
				crs++
			}
			if crs < len(seg) {
				d.state = wstateData // any other byte ends in data
			}
			if crs%2 == 1 { // each '\r' toggles: data -> CR, CR -> data
				if d.state == wstateData {
					d.state = wstateCR
				} else {
					d.state = wstateData
				}
			}
			m, err := d.w.Write(seg)
			n += m
			if err != nil {
				return n, err
			}
		}
		if lf < 0 {
			break
		}
		if d.state == wstateData {
			d.w.WriteByte('\r') // a bare LF is sent as CRLF
		}
		if err = d.w.WriteByte('\n'); err != nil {
			return n, err
		}
		n++
		d.state = wstateBeginLine
	}
	return n, nil
}

// Close ends the body with the end-of-data line, as textproto's does.
func (d *dotWriter) Close() error {
	if d.c != nil && d.c.dot == d {
		d.c.dot = nil
	}
	switch d.state {
	default:
		d.w.WriteByte('\r')
		fallthrough
	case wstateCR:
		d.w.WriteByte('\n')
		fallthrough
	case wstateBeginLine:
		d.w.WriteString(".\r\n")
	}
	return d.w.Flush()
}

// closeDot ends an open DATA body before the next command, as
// textproto.Writer.PrintfLine does for its own DotWriter.
func (c *Client) closeDot() {
	if c.dot != nil {
		c.dot.Close() // sets c.dot = nil
	}
}
