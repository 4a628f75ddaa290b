package smtp

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/textproto"
	"testing"
)

// benchBody is a mail body of about size bytes: 76-character CRLF lines,
// one in ten starting with a '.'.
func benchBody(size int) []byte {
	var b bytes.Buffer
	for i := 0; b.Len() < size; i++ {
		line := fmt.Sprintf("%04d The quick brown fox jumps over the lazy dog, again and again and again", i)
		if i%10 == 0 {
			line = "." + line[1:]
		}
		b.WriteString(line + "\r\n")
	}
	return b.Bytes()[:size]
}

// stuffed is body as it comes over the wire after DATA.
func stuffed(body []byte) []byte {
	var b bytes.Buffer
	w := textproto.NewWriter(bufio.NewWriter(&b)).DotWriter()
	w.Write(body)
	w.Close()
	return append(b.Bytes(), "QUIT\r\n"...)
}

var benchSizes = []struct {
	name string
	size int
}{{"1KiB", 1 << 10}, {"100KiB", 100 << 10}}

func benchmarkDataReader(b *testing.B, chunked bool) {
	for _, bs := range benchSizes {
		b.Run(bs.name, func(b *testing.B) {
			wire := stuffed(benchBody(bs.size))
			src := bytes.NewReader(wire)
			br := bufio.NewReader(src) // textproto.NewConn's size
			buf := make([]byte, 32<<10)
			b.SetBytes(int64(bs.size))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				src.Reset(wire)
				br.Reset(src)
				var r io.Reader
				if chunked {
					r = &dataReader{r: br}
				} else {
					r = &refDataReader{r: br}
				}
				if _, err := io.CopyBuffer(io.Discard, struct{ io.Reader }{r}, buf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkDataReader is the chunked DATA reader; BenchmarkDataReaderRef
// the v0.25.1 byte-by-byte one, for comparison in the same run.
func BenchmarkDataReader(b *testing.B)    { benchmarkDataReader(b, true) }
func BenchmarkDataReaderRef(b *testing.B) { benchmarkDataReader(b, false) }

func benchmarkDotWriter(b *testing.B, runs bool) {
	for _, bs := range benchSizes {
		b.Run(bs.name, func(b *testing.B) {
			body := benchBody(bs.size)
			bw := bufio.NewWriter(io.Discard) // textproto.NewConn's size
			tw := textproto.NewWriter(bw)
			b.SetBytes(int64(bs.size))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				var w io.WriteCloser
				if runs {
					w = &dotWriter{w: bw}
				} else {
					w = tw.DotWriter()
				}
				// 32 KiB writes, as io.Copy makes them.
				for p := body; len(p) > 0; {
					k := len(p)
					if k > 32<<10 {
						k = 32 << 10
					}
					if _, err := w.Write(p[:k]); err != nil {
						b.Fatal(err)
					}
					p = p[k:]
				}
				if err := w.Close(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkDotWriter is the client's run-based DATA writer;
// BenchmarkDotWriterRef net/textproto's DotWriter it replaces.
func BenchmarkDotWriter(b *testing.B)    { benchmarkDotWriter(b, true) }
func BenchmarkDotWriterRef(b *testing.B) { benchmarkDotWriter(b, false) }

func benchmarkLineLimitReader(b *testing.B, indexByte bool) {
	for _, bs := range benchSizes {
		b.Run(bs.name, func(b *testing.B) {
			wire := stuffed(benchBody(bs.size))
			src := bytes.NewReader(wire)
			buf := make([]byte, 4096) // what bufio.Reader asks for
			b.SetBytes(int64(bs.size))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				src.Reset(wire)
				var r io.Reader
				if indexByte {
					r = &lineLimitReader{R: src, LineLimit: 2000}
				} else {
					r = &refLineLimitReader{R: src, LineLimit: 2000}
				}
				for {
					if _, err := r.Read(buf); err == io.EOF {
						break
					} else if err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}

// BenchmarkLineLimitReader is the MaxLineLength count under the server's
// bufio.Reader; BenchmarkLineLimitReaderRef the v0.25.1 byte loop.
func BenchmarkLineLimitReader(b *testing.B)    { benchmarkLineLimitReader(b, true) }
func BenchmarkLineLimitReaderRef(b *testing.B) { benchmarkLineLimitReader(b, false) }
