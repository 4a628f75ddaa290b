// Package rewrite changes the sender addresses in a message's header
// section (From:, Sender:, Reply-To:) as a stream passes through, for
// sendmail-style masquerading and genericstable. The body is never read
// into memory: only the header section, up to a bound, is held.
package rewrite

import (
	"bufio"
	"bytes"
	"io"
	"net/mail"
	"strings"
)

// DefaultMaxHeader bounds the header section held for rewriting; a longer
// one passes through unchanged.
const DefaultMaxHeader = 64 << 10

// Func maps one address; ok false leaves it as it is.
type Func func(addr string) (to string, ok bool)

// Result says what Senders did, once the header section has been read.
type Result struct {
	Fields  int  // header fields rewritten
	TooLong bool // the header section exceeded the bound and passed unchanged
}

// senderFields are the fields sendmail rewrites for a sender.
var senderFields = map[string]bool{"from": true, "sender": true, "reply-to": true}

// Reader yields a message with the addresses of its From:, Sender: and
// Reply-To: fields rewritten. It reads the header section (up to its bound)
// on the first Read, so nothing is held before the message is read.
type Reader struct {
	r   io.Reader
	max int
	fn  Func
	out io.Reader
	res Result
	err error
}

// Senders returns a Reader of r whose sender header fields are rewritten by
// fn. The header section is held up to max bytes (0 means
// DefaultMaxHeader); a longer one passes through unchanged. A field that
// does not parse as an address list is left as it is. Line endings are kept
// as they came (CRLF or LF).
func Senders(r io.Reader, max int, fn Func) *Reader {
	if max <= 0 {
		max = DefaultMaxHeader
	}
	return &Reader{r: r, max: max, fn: fn}
}

func (x *Reader) Read(p []byte) (int, error) {
	if x.out == nil && x.err == nil {
		x.out, x.res, x.err = senders(x.r, x.max, x.fn)
	}
	if x.err != nil {
		return 0, x.err
	}
	return x.out.Read(p)
}

// Result says what the rewrite did; it is known once the first Read returned.
func (x *Reader) Result() Result { return x.res }

func senders(r io.Reader, max int, fn Func) (io.Reader, Result, error) {
	br := bufio.NewReaderSize(r, 4096)
	var head []byte
	for {
		line, err := br.ReadSlice('\n')
		if len(head)+len(line) > max {
			head = append(head, line...)
			return io.MultiReader(bytes.NewReader(head), br), Result{TooLong: true}, nil
		}
		head = append(head, line...)
		if err == bufio.ErrBufferFull {
			continue // a long line: keep reading it
		}
		if err == io.EOF {
			break // a message without a body
		}
		if err != nil {
			return nil, Result{}, err
		}
		if s := string(line); s == "\n" || s == "\r\n" {
			break // the empty line ends the header section
		}
	}
	out, res := rewriteHeader(head, fn)
	return io.MultiReader(bytes.NewReader(out), br), res, nil
}

// rewriteHeader rewrites the sender fields of a complete header section.
func rewriteHeader(head []byte, fn Func) ([]byte, Result) {
	var res Result
	var out bytes.Buffer
	out.Grow(len(head) + 64)
	fields := splitFields(head)
	for _, f := range fields {
		name, value, ok := strings.Cut(string(f), ":")
		if !ok || !senderFields[strings.ToLower(strings.TrimSpace(name))] {
			out.Write(f)
			continue
		}
		eol := "\r\n"
		if !bytes.HasSuffix(f, []byte("\r\n")) {
			eol = "\n"
		}
		list, err := mail.ParseAddressList(unfold(value))
		if err != nil || len(list) == 0 {
			out.Write(f)
			continue
		}
		changed := false
		for _, a := range list {
			if to, ok := fn(a.Address); ok && to != a.Address {
				a.Address, changed = to, true
			}
		}
		if !changed {
			out.Write(f)
			continue
		}
		parts := make([]string, len(list))
		for i, a := range list {
			parts[i] = a.String()
		}
		out.WriteString(name + ": " + strings.Join(parts, ","+eol+" ") + eol)
		res.Fields++
	}
	return out.Bytes(), res
}

// splitFields splits a header section into fields (a field with its
// continuation lines); the final empty line is its own element.
func splitFields(head []byte) [][]byte {
	var fields [][]byte
	start := 0
	for i := 0; i < len(head); {
		j := bytes.IndexByte(head[i:], '\n')
		end := len(head)
		if j >= 0 {
			end = i + j + 1
		}
		// A line that starts with white space continues the field before it.
		if i > start && (head[i] != ' ' && head[i] != '\t') {
			fields = append(fields, head[start:i])
			start = i
		}
		i = end
	}
	if start < len(head) {
		fields = append(fields, head[start:])
	}
	return fields
}

func unfold(v string) string {
	v = strings.ReplaceAll(v, "\r\n", "")
	return strings.TrimSpace(strings.ReplaceAll(v, "\n", ""))
}
