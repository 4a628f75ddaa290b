package blob_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
	"testing/iotest"
	"time"

	"github.com/mailfwd/mailfwd/pkg/blob"
	"github.com/mailfwd/mailfwd/pkg/testenv"
)

// A reader that fails with io.ErrUnexpectedEOF (what go-smtp's DATA reader
// returns when the client goes away mid-body) is a failure, not the end of
// the body: nothing may be stored, at any length (one S3 part or several).
func TestPutStreamUnexpectedEOFStoresNothing(t *testing.T) {
	m := testenv.StartMinio(t)
	stores := map[string]blob.Store{"fs": newFS(t, t.TempDir(), false)}
	s3 := openS3(t, m.URL("unexpected-eof"))
	bootstrap(t, s3)
	stores["s3"] = s3
	for name, s := range stores {
		for _, n := range []int{10, 70_000, 5 << 20, 11 << 20} {
			r := io.MultiReader(bytes.NewReader(bytes.Repeat([]byte("x"), n)), iotest.ErrReader(io.ErrUnexpectedEOF))
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			_, err := s.PutStream(ctx, "cut", r)
			cancel()
			if !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Errorf("%s: PutStream of %d bytes then io.ErrUnexpectedEOF = %v, want that error", name, n, err)
			}
			ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
			if _, err := s.Get(ctx, "cut"); !errors.Is(err, blob.ErrNotFound) {
				t.Errorf("%s: after a failed PutStream of %d bytes, Get = %v, want not found", name, n, err)
			}
			cancel()
		}
	}
}
