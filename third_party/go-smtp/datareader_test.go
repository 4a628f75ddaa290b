package smtp

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"strings"
	"testing"
)

// refDataReader is go-smtp v0.25.1's dataReader.Read, byte by byte, kept
// as the reference the chunked dataReader is checked against.
type refDataReader struct {
	r     *bufio.Reader
	state int

	limited bool
	n       int64
}

func (r *refDataReader) Read(b []byte) (n int, err error) {
	if r.limited {
		if r.n <= 0 {
			return 0, ErrDataTooLarge
		}
		if int64(len(b)) > r.n {
			b = b[0:r.n]
		}
	}
	for n < len(b) && r.state != stateEOF {
		var c byte
		c, err = r.r.ReadByte()
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			break
		}
		switch r.state {
		case stateBeginLine:
			if c == '.' {
				r.state = stateDot
				continue
			}
			if c == '\r' {
				r.state = stateCR
				break
			}
			r.state = stateData
		case stateDot:
			if c == '\r' {
				r.state = stateDotCR
				continue
			}
			r.state = stateData
		case stateDotCR:
			if c == '\n' {
				r.state = stateEOF
				continue
			}
			r.state = stateData
		case stateCR:
			if c == '\n' {
				r.state = stateBeginLine
				break
			}
			r.state = stateData
		case stateData:
			if c == '\r' {
				r.state = stateCR
			}
		}
		b[n] = c
		n++
	}
	if err == nil && r.state == stateEOF {
		err = io.EOF
	}
	if r.limited {
		r.n -= int64(n)
	}
	return
}

var errCut = errors.New("connection cut")

// chunkReader hands out src in pieces of the sizes rnd picks (0 included:
// an empty read with no error, at most twice in a row), then endErr.
type chunkReader struct {
	src    []byte
	rnd    *rand.Rand
	max    int
	endErr error
	empty  int // consecutive empty reads
}

func (c *chunkReader) Read(b []byte) (int, error) {
	if len(c.src) == 0 {
		return 0, c.endErr
	}
	k := c.rnd.Intn(c.max + 1)
	if k == 0 {
		if c.empty++; c.empty > 2 {
			k, c.empty = 1, 0
		}
	} else {
		c.empty = 0
	}
	if k > len(b) {
		k = len(b)
	}
	if k > len(c.src) {
		k = len(c.src)
	}
	n := copy(b, c.src[:k])
	c.src = c.src[n:]
	return n, nil
}

// dataStack builds what Conn reads DATA through: a bufio.Reader over the
// line length limit over the connection.
func dataStack(src []byte, seed int64, maxChunk, bufSize, lineLimit int, endErr error) *bufio.Reader {
	conn := &chunkReader{src: src, rnd: rand.New(rand.NewSource(seed)), max: maxChunk, endErr: endErr}
	return bufio.NewReaderSize(&lineLimitReader{R: conn, LineLimit: lineLimit}, bufSize)
}

type readResult struct {
	data string
	err  error
}

// readSteps reads r with the read sizes rnd picks until an error, and
// returns each call's result.
func readSteps(r io.Reader, rnd *rand.Rand, maxRead int) []readResult {
	var steps []readResult
	for i := 0; i < 1<<16; i++ {
		b := make([]byte, rnd.Intn(maxRead+1))
		n, err := r.Read(b)
		steps = append(steps, readResult{string(b[:n]), err})
		if err != nil {
			break
		}
	}
	return steps
}

// leftIn is what remains to be read from br (the next command).
func leftIn(br *bufio.Reader) readResult {
	rest, err := io.ReadAll(br)
	return readResult{string(rest), err}
}

type dataCase struct {
	seed      int64
	maxChunk  int // largest read from the connection
	bufSize   int // bufio.Reader size (16 at least)
	lineLimit int // 0: none
	maxBytes  int // 0: none
	maxRead   int // largest Read buffer the caller passes
	endErr    error
}

// compareDataReaders runs the reference and the chunked reader over the
// same input, split the same way, and reports the first difference.
func compareDataReaders(input []byte, dc dataCase) error {
	refBR := dataStack(input, dc.seed, dc.maxChunk, dc.bufSize, dc.lineLimit, dc.endErr)
	newBR := dataStack(input, dc.seed, dc.maxChunk, dc.bufSize, dc.lineLimit, dc.endErr)
	ref := &refDataReader{r: refBR}
	got := &dataReader{r: newBR}
	if dc.maxBytes > 0 {
		ref.limited, ref.n = true, int64(dc.maxBytes)
		got.limited, got.n = true, int64(dc.maxBytes)
	}
	refSteps := readSteps(ref, rand.New(rand.NewSource(dc.seed+1)), dc.maxRead)
	gotSteps := readSteps(got, rand.New(rand.NewSource(dc.seed+1)), dc.maxRead)
	// Then, as handleData does after the backend returns, drain the rest
	// with no size limit.
	ref.limited, got.limited = false, false
	refSteps = append(refSteps, readSteps(ref, rand.New(rand.NewSource(dc.seed+2)), dc.maxRead)...)
	gotSteps = append(gotSteps, readSteps(got, rand.New(rand.NewSource(dc.seed+2)), dc.maxRead)...)
	refRest, gotRest := leftIn(refBR), leftIn(newBR)
	if len(refSteps) != len(gotSteps) {
		return fmt.Errorf("read calls: reference %d, chunked %d", len(refSteps), len(gotSteps))
	}
	for i := range refSteps {
		if refSteps[i] != gotSteps[i] {
			return fmt.Errorf("read %d: reference %q, %v; chunked %q, %v", i, refSteps[i].data, refSteps[i].err, gotSteps[i].data, gotSteps[i].err)
		}
	}
	if refRest != gotRest {
		return fmt.Errorf("left after DATA: reference %q, %v; chunked %q, %v", refRest.data, refRest.err, gotRest.data, gotRest.err)
	}
	if ref.state != got.state {
		return fmt.Errorf("state: reference %d, chunked %d", ref.state, got.state)
	}
	return nil
}

// TestDataReaderSemantics pins down what the DATA reader does (the same
// for the reference and the chunked reader) on the inputs that matter.
func TestDataReaderSemantics(t *testing.T) {
	tests := []struct {
		name      string
		in        string
		maxBytes  int
		lineLimit int
		want      string
		err       error
		rest      string
	}{
		{name: "plain", in: "a\r\nb\r\n.\r\nQUIT\r\n", want: "a\r\nb\r\n", err: io.EOF, rest: "QUIT\r\n"},
		{name: "empty", in: ".\r\nQUIT\r\n", want: "", err: io.EOF, rest: "QUIT\r\n"},
		{name: "unstuff", in: "..a\r\n...\r\n.\r\n", want: ".a\r\n..\r\n", err: io.EOF},
		{name: "dot mid line", in: "a.b\r\n.\r\n", want: "a.b\r\n", err: io.EOF},
		{name: "bare LF is data", in: "a\n.\r\nb\r\n.\r\n", want: "a\n.\r\nb\r\n", err: io.EOF},
		{name: "dot LF", in: ".\nx\r\n.\r\n", want: "\nx\r\n", err: io.EOF},
		{name: "dot CR other", in: ".\rx\r\n.\r\n", want: "x\r\n", err: io.EOF},
		{name: "CR CR LF", in: "a\r\r\n.\r\n.\r\n", want: "a\r\r\n.\r\n", err: io.EOF},
		{name: "cut", in: "a\r\nb", want: "a\r\nb", err: io.ErrUnexpectedEOF},
		{name: "cut in marker", in: "a\r\n.\r", want: "a\r\n", err: io.ErrUnexpectedEOF},
		{name: "too large", in: "abcdef\r\n.\r\n", maxBytes: 4, want: "abcd", err: ErrDataTooLarge},
		{name: "exactly the limit", in: "ab\r\n.\r\n", maxBytes: 4, want: "ab\r\n", err: ErrDataTooLarge},
		{name: "limit not reached", in: "ab\r\n.\r\n", maxBytes: 5, want: "ab\r\n", err: io.EOF},
		{name: "line too long", in: strings.Repeat("x", 40) + "\r\n.\r\n", lineLimit: 20, want: strings.Repeat("x", 16), err: ErrTooLongLine}, // the first buffer fill passes
	}
	for _, tc := range tests {
		for _, impl := range []string{"reference", "chunked"} {
			t.Run(tc.name+"/"+impl, func(t *testing.T) {
				br := bufio.NewReaderSize(&lineLimitReader{R: strings.NewReader(tc.in), LineLimit: tc.lineLimit}, 16)
				var r io.Reader
				if impl == "reference" {
					r = &refDataReader{r: br, limited: tc.maxBytes > 0, n: int64(tc.maxBytes)}
				} else {
					r = &dataReader{r: br, limited: tc.maxBytes > 0, n: int64(tc.maxBytes)}
				}
				got, err := readToError(r)
				if string(got) != tc.want || err != tc.err {
					t.Fatalf("got %q, %v; want %q, %v", got, err, tc.want, tc.err)
				}
				if tc.err == io.EOF {
					rest, _ := io.ReadAll(br)
					if string(rest) != tc.rest {
						t.Fatalf("left %q, want %q", rest, tc.rest)
					}
				}
			})
		}
	}
}

// readToError reads r until an error and returns it (io.EOF included).
func readToError(r io.Reader) ([]byte, error) {
	var out []byte
	b := make([]byte, 7)
	for {
		n, err := r.Read(b)
		out = append(out, b[:n]...)
		if err != nil {
			return out, err
		}
	}
}

// dataFuzzSeeds are the inputs the fuzzer starts from.
var dataFuzzSeeds = []string{
	"a\r\nb\r\n.\r\nQUIT\r\n",
	"..a\r\n.\r\n",
	".\nx\r\n.\r\n.\r\n",
	".\rx\r\n.\r\n",
	"a\r\r\n.\r\n.\r\n",
	"a\n.\nb\n.\r\n",
	"a\r\nb",
	strings.Repeat("0123456789abcdef", 40) + "\r\n.\r\nRSET\r\n",
	"\r\n.\r\n",
	".",
}

func FuzzDataReaderDifferential(f *testing.F) {
	for i, s := range dataFuzzSeeds {
		f.Add([]byte(s), int64(i), uint8(7), uint8(0), uint16(0), uint16(0), uint8(9), false)
		f.Add([]byte(s), int64(i), uint8(200), uint8(40), uint16(30), uint16(20), uint8(255), true)
	}
	f.Fuzz(func(t *testing.T, input []byte, seed int64, maxChunk, bufSize uint8, lineLimit, maxBytes uint16, maxRead uint8, cut bool) {
		dc := dataCase{
			seed:      seed,
			maxChunk:  int(maxChunk),
			bufSize:   16 + int(bufSize),
			lineLimit: int(lineLimit % 512),
			maxBytes:  int(maxBytes),
			maxRead:   int(maxRead),
			endErr:    io.EOF,
		}
		if cut {
			dc.endErr = errCut
		}
		if err := compareDataReaders(input, dc); err != nil {
			t.Fatalf("%v (input %q, case %+v)", err, input, dc)
		}
	})
}

// TestDataReaderDifferentialRandom runs the differential check on random
// SMTP-like bodies (lines of dots, CRs, LFs and text) in every go test run,
// with no fuzzing engine needed.
func TestDataReaderDifferentialRandom(t *testing.T) {
	rnd := rand.New(rand.NewSource(1))
	iterations := 3000
	if testing.Short() {
		iterations = 300
	}
	for i := 0; i < iterations; i++ {
		input := randomSMTPBody(rnd, rnd.Intn(3000))
		dc := dataCase{
			seed:      int64(i),
			maxChunk:  rnd.Intn(300),
			bufSize:   16 + rnd.Intn(200),
			lineLimit: []int{0, 0, 50, 200, 1000}[rnd.Intn(5)],
			maxBytes:  []int{0, 0, rnd.Intn(3000)}[rnd.Intn(3)],
			maxRead:   rnd.Intn(600),
			endErr:    []error{io.EOF, errCut}[rnd.Intn(2)],
		}
		if err := compareDataReaders(input, dc); err != nil {
			t.Fatalf("%v (input %q, case %+v)", err, input, dc)
		}
	}
}

// randomSMTPBody draws n bytes, mostly text, with the bytes that the dot
// and end-of-data logic looks at ('.', '\r', '\n') made common.
func randomSMTPBody(rnd *rand.Rand, n int) []byte {
	pieces := []string{".", "\r", "\n", "\r\n", ".\r\n", "\r\n.\r\n", "..", "x", "hello world", "\x00", "\xff"}
	var b bytes.Buffer
	for b.Len() < n {
		b.WriteString(pieces[rnd.Intn(len(pieces))])
	}
	return b.Bytes()
}
