package delivery

import (
	"bytes"
	"math/rand"
	"strings"
	"testing"
)

// writeSplit writes b to a foldWriter in random pieces and returns the
// output.
func writeSplit(t testing.TB, b []byte, max int, rng *rand.Rand) []byte {
	t.Helper()
	var out bytes.Buffer
	f := newFoldWriter(&out, max)
	for len(b) > 0 {
		n := 1 + rng.Intn(len(b))
		if rng.Intn(3) == 0 {
			n = 1 + rng.Intn(min(len(b), 4))
		}
		if k, err := f.Write(b[:n]); k != n || err != nil {
			t.Fatalf("Write = %d, %v", k, err)
		}
		b = b[n:]
	}
	if err := f.Flush(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// checkFolded checks out against foldRef and that every line of it is
// at most max octets (CRLF not counted) and ends in CRLF.
func checkFolded(t testing.TB, in, out []byte, max int) {
	t.Helper()
	if want := foldRef(in, max); !bytes.Equal(out, want) {
		t.Fatalf("folded\n in   %q\n got  %q\n want %q", in, out, want)
	}
	for i, l := range bytes.SplitAfter(out, []byte("\n")) {
		body, ok := bytes.CutSuffix(l, []byte("\r\n"))
		if !ok && bytes.HasSuffix(l, []byte("\n")) {
			t.Fatalf("line %d ends in a bare LF", i)
		}
		if max > 0 && len(body) > max {
			t.Fatalf("line %d has %d octets, limit %d", i, len(body), max)
		}
	}
}

// foldRef is the folding rule one byte at a time: CRLF or a bare LF ends
// a line (sent as CRLF); any other byte is content, and content beyond
// max octets on a line is preceded by CRLF SP (the SP counting as
// content of the new line).
func foldRef(in []byte, max int) []byte {
	var out []byte
	n := 0
	for i := 0; i < len(in); i++ {
		c := in[i]
		switch {
		case c == '\r' && i+1 < len(in) && in[i+1] == '\n':
			out, n = append(out, "\r\n"...), 0
			i++
		case c == '\n':
			out, n = append(out, "\r\n"...), 0
		default:
			if max > 0 && n == max {
				out, n = append(out, "\r\n "...), 1
			}
			out, n = append(out, c), n+1
		}
	}
	return out
}

func TestFoldWriter(t *testing.T) {
	long := strings.Repeat("x", 20000)
	cases := []struct {
		name, in, want string
		max            int
	}{
		{"short lines unchanged", "a\r\nb\r\n", "a\r\nb\r\n", 998},
		{"exactly at the limit", "abcd\r\n", "abcd\r\n", 4},
		{"one over", "abcde\r\n", "abcd\r\n e\r\n", 4},
		{"continuation counts its space", "abcdefghij\r\n", "abcd\r\n efg\r\n hij\r\n", 4},
		{"CR before LF is the line end", "abcd\r\nabcd\r\n", "abcd\r\nabcd\r\n", 4},
		{"bare CR is content", "ab\rcd\r\n", "ab\rc\r\n d\r\n", 4},
		{"bare LF becomes CRLF", "ab\ncd\n", "ab\r\ncd\r\n", 4},
		{"no folding", "abcdefgh\n", "abcdefgh\r\n", 0},
		{"no final line end", "abcdef", "abcd\r\n ef", 4},
		{"20000-char line", long + "\r\n", "", 998},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for seed := range int64(20) {
				out := writeSplit(t, []byte(tc.in), tc.max, rand.New(rand.NewSource(seed)))
				if tc.want != "" && string(out) != tc.want {
					t.Fatalf("seed %d: %q, want %q", seed, out, tc.want)
				}
				checkFolded(t, []byte(tc.in), out, tc.max)
			}
		})
	}
}

// FuzzFoldWriter: whatever the body and however it is split into writes,
// the output is the one-byte-at-a-time rule's (foldRef), and no line goes
// out longer than the limit.
func FuzzFoldWriter(f *testing.F) {
	f.Add([]byte("abcdefghij\r\n"), 4, int64(1))
	f.Add([]byte("ab\rcd\r\r\n\n.\r\n"), 3, int64(2))
	f.Add([]byte(strings.Repeat("y", 3000)), 998, int64(3))
	f.Fuzz(func(t *testing.T, in []byte, max int, seed int64) {
		if max < 1 || max > 2000 {
			max = 1 + (max%2000+2000)%2000
		}
		checkFolded(t, in, writeSplit(t, in, max, rand.New(rand.NewSource(seed))), max)
	})
}
