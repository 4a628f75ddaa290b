package smtp

import (
	"bytes"
	"fmt"
	"io"
	"math/rand"
	"testing"
)

// refLineLimitReader is go-smtp v0.25.1's lineLimitReader.Read, counting
// byte by byte, kept as the reference for the IndexByte version.
type refLineLimitReader struct {
	R         io.Reader
	LineLimit int

	curLineLength int
}

func (r *refLineLimitReader) Read(b []byte) (int, error) {
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

// compareLineLimitReaders reads input through both, with the same read
// sizes, switching the limit off and on again as handleBdat does, and
// reports the first difference in a Read's result or the line count.
func compareLineLimitReaders(input []byte, seed int64, limit, maxRead int) error {
	src := func() io.Reader {
		return &chunkReader{src: input, rnd: rand.New(rand.NewSource(seed)), max: 1 + maxRead, endErr: io.EOF}
	}
	ref := &refLineLimitReader{R: src(), LineLimit: limit}
	got := &lineLimitReader{R: src(), LineLimit: limit}
	rnd := rand.New(rand.NewSource(seed + 1))
	for i := 0; i < 1<<16; i++ {
		if rnd.Intn(20) == 0 { // a BDAT chunk: no limit while it is read
			if ref.LineLimit == 0 {
				ref.LineLimit, got.LineLimit = limit, limit
			} else {
				ref.LineLimit, got.LineLimit = 0, 0
			}
		}
		size := rnd.Intn(maxRead + 1)
		rb, gb := make([]byte, size), make([]byte, size)
		rn, rerr := ref.Read(rb)
		gn, gerr := got.Read(gb)
		if rn != gn || rerr != gerr || !bytes.Equal(rb[:rn], gb[:gn]) {
			return fmt.Errorf("read %d: reference %q, %v; new %q, %v", i, rb[:rn], rerr, gb[:gn], gerr)
		}
		if ref.curLineLength != got.curLineLength {
			return fmt.Errorf("read %d: line length: reference %d, new %d", i, ref.curLineLength, got.curLineLength)
		}
		if rerr == io.EOF || (rerr != nil && i > 100) {
			return nil
		}
	}
	return nil
}

func FuzzLineLimitReaderDifferential(f *testing.F) {
	f.Add([]byte("abc\r\ndefgh\r\n\r\nx"), int64(1), int16(4), uint8(3))
	f.Add([]byte("\n\n\n"), int64(2), int16(1), uint8(1))
	f.Add([]byte("abc"), int64(3), int16(-1), uint8(2))
	f.Fuzz(func(t *testing.T, input []byte, seed int64, limit int16, maxRead uint8) {
		if err := compareLineLimitReaders(input, seed, int(limit), int(maxRead)); err != nil {
			t.Fatalf("%v (input %q, limit %d)", err, input, limit)
		}
	})
}

func TestLineLimitReaderDifferentialRandom(t *testing.T) {
	rnd := rand.New(rand.NewSource(3))
	for i := 0; i < 2000; i++ {
		input := randomSMTPBody(rnd, rnd.Intn(2000))
		limit := []int{0, -1, 1, 2, 5, 20, 80, 1000}[rnd.Intn(8)]
		if err := compareLineLimitReaders(input, int64(i), limit, rnd.Intn(300)); err != nil {
			t.Fatalf("%v (input %q, limit %d)", err, input, limit)
		}
	}
}
