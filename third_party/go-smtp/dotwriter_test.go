package smtp

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"net/textproto"
	"strings"
	"testing"
)

// splitWrites writes in to w in the pieces rnd picks (an empty write
// first), then closes it, and returns the first error.
func splitWrites(w io.WriteCloser, in []byte, rnd *rand.Rand, maxWrite int) error {
	if _, err := w.Write(nil); err != nil {
		return err
	}
	for len(in) > 0 {
		k := 1 + rnd.Intn(maxWrite+1)
		if k > len(in) {
			k = len(in)
		}
		n, err := w.Write(in[:k])
		if err != nil {
			return err
		}
		if n != k {
			return fmt.Errorf("wrote %d of %d bytes with no error", n, k)
		}
		in = in[k:]
	}
	return w.Close()
}

// failAfter is a connection that takes limit bytes, then fails.
type failAfter struct {
	buf   bytes.Buffer
	limit int
}

var errWriteCut = errors.New("write: connection cut")

func (f *failAfter) Write(b []byte) (int, error) {
	if room := f.limit - f.buf.Len(); len(b) > room {
		f.buf.Write(b[:room])
		return room, errWriteCut
	}
	return f.buf.Write(b)
}

// compareDotWriters writes in through textproto's DotWriter and through
// dotWriter, split the same way, and reports the first difference on the
// wire. With failAt >= 0 the connection fails after that many bytes: both
// must report the connection's error, and what reached the wire must be a
// prefix of the full reference output.
func compareDotWriters(in []byte, seed int64, maxWrite, bufSize, failAt int) error {
	var full bytes.Buffer
	refBW := bufio.NewWriterSize(&full, bufSize)
	if err := splitWrites(textproto.NewWriter(refBW).DotWriter(), in, rand.New(rand.NewSource(seed)), maxWrite); err != nil {
		return fmt.Errorf("reference: %v", err)
	}
	if failAt < 0 {
		var got bytes.Buffer
		err := splitWrites(&dotWriter{w: bufio.NewWriterSize(&got, bufSize)}, in, rand.New(rand.NewSource(seed)), maxWrite)
		if err != nil {
			return fmt.Errorf("dotWriter: %v", err)
		}
		if !bytes.Equal(got.Bytes(), full.Bytes()) {
			return fmt.Errorf("wire: reference %q, dotWriter %q", full.Bytes(), got.Bytes())
		}
		return nil
	}
	refConn := &failAfter{limit: failAt}
	refErr := splitWrites(textproto.NewWriter(bufio.NewWriterSize(refConn, bufSize)).DotWriter(), in, rand.New(rand.NewSource(seed)), maxWrite)
	conn := &failAfter{limit: failAt}
	err := splitWrites(&dotWriter{w: bufio.NewWriterSize(conn, bufSize)}, in, rand.New(rand.NewSource(seed)), maxWrite)
	if err != refErr {
		return fmt.Errorf("error: reference %v, dotWriter %v", refErr, err)
	}
	if !bytes.HasPrefix(full.Bytes(), conn.buf.Bytes()) {
		return fmt.Errorf("wire before the cut: %q is not a prefix of %q", conn.buf.Bytes(), full.Bytes())
	}
	return nil
}

func TestDotWriterSemantics(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", "\r\n.\r\n"},
		{"a", "a\r\n.\r\n"},
		{"a\r\n", "a\r\n.\r\n"},
		{"a\r", "a\r\n.\r\n"},
		{".a\r\n..\r\n.", "..a\r\n...\r\n..\r\n.\r\n"},
		{"a\nb\n", "a\r\nb\r\n.\r\n"},
		{"\n.\n", "\r\n..\r\n.\r\n"},
		{"a\r\r\n", "a\r\r\r\n.\r\n"},
		{"a\r\r\r\n.", "a\r\r\r\n..\r\n.\r\n"},
		{"a.b\r\n", "a.b\r\n.\r\n"},
	}
	for _, tc := range tests {
		for _, impl := range []string{"textproto", "dotWriter"} {
			var got bytes.Buffer
			bw := bufio.NewWriter(&got)
			var w io.WriteCloser = &dotWriter{w: bw}
			if impl == "textproto" {
				w = textproto.NewWriter(bw).DotWriter()
			}
			if err := splitWrites(w, []byte(tc.in), rand.New(rand.NewSource(1)), 2); err != nil {
				t.Fatal(err)
			}
			if got.String() != tc.want {
				t.Errorf("%s(%q) = %q, want %q", impl, tc.in, got.String(), tc.want)
			}
		}
	}
}

func FuzzDotWriterDifferential(f *testing.F) {
	for i, s := range []string{"", ".", "a\r\n.\r\n", "\n.\n..\r\n", "a\r\r\n\r\r\r\n", "a\rb\n.\r.\n", strings.Repeat("x.\r\n", 100)} {
		f.Add([]byte(s), int64(i), uint8(3), uint8(0), int16(-1))
		f.Add([]byte(s), int64(i), uint8(200), uint8(100), int16(7))
	}
	f.Fuzz(func(t *testing.T, in []byte, seed int64, maxWrite, bufSize uint8, failAt int16) {
		if err := compareDotWriters(in, seed, int(maxWrite), 16+int(bufSize), int(failAt)); err != nil {
			t.Fatalf("%v (input %q)", err, in)
		}
	})
}

// TestDotWriterDifferentialRandom runs the differential check on random
// bodies in every go test run.
func TestDotWriterDifferentialRandom(t *testing.T) {
	rnd := rand.New(rand.NewSource(2))
	iterations := 3000
	if testing.Short() {
		iterations = 300
	}
	for i := 0; i < iterations; i++ {
		in := randomSMTPBody(rnd, rnd.Intn(3000))
		failAt := -1
		if rnd.Intn(3) == 0 {
			failAt = rnd.Intn(len(in) + 10)
		}
		if err := compareDotWriters(in, int64(i), rnd.Intn(600), 16+rnd.Intn(5000), failAt); err != nil {
			t.Fatalf("%v (input %q)", err, in)
		}
	}
}

// TestClientCommandEndsOpenData: a command sent while a DATA body is still
// open ends the body first (CRLF.CRLF), as with textproto's DotWriter.
func TestClientCommandEndsOpenData(t *testing.T) {
	server := strings.Join([]string{
		"220 hello world",
		"250-mx.google.com at your service",
		"250 PIPELINING",
		"250 Sender ok",
		"250 Receiver ok",
		"354 Go ahead",
		"250 Data ok",
		"221 Goodbye",
	}, "\r\n") + "\r\n"
	var wrote bytes.Buffer
	var fake faker
	fake.ReadWriter = struct {
		io.Reader
		io.Writer
	}{strings.NewReader(server), &wrote}
	c := NewClient(fake)
	if err := c.Hello("localhost"); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail("a@example.org", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("b@example.org", nil); err != nil {
		t.Fatal(err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(w, ".body"); err != nil {
		t.Fatal(err)
	}
	// No Close: the next command ends the body. Its reply is the DATA one.
	if err := c.Noop(); err != nil {
		t.Fatal(err)
	}
	want := "DATA\r\n..body\r\n.\r\nNOOP\r\n"
	if !strings.HasSuffix(wrote.String(), want) {
		t.Fatalf("wrote %q, want it to end in %q", wrote.String(), want)
	}
}
