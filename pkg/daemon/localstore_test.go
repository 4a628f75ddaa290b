package daemon

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/mailfwd/mailfwd/pkg/queue"
	"github.com/mailfwd/mailfwd/pkg/testenv"
)

// With --bootstrap=false the daemons still check --nats-store-dir: a
// directory that is not the server's store is a configuration error.
func TestNATSStoreDirCheckedWithoutBootstrap(t *testing.T) {
	n := testenv.StartNATS(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	q, err := queue.Connect(ctx, queue.Config{URL: n.URL()})
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Bootstrap(ctx); err != nil {
		t.Fatal(err)
	}
	q.Close()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	blobURL := "file://" + filepath.Join(t.TempDir(), "bodies")

	other := t.TempDir()
	if err := os.MkdirAll(filepath.Join(other, "jetstream"), 0o750); err != nil {
		t.Fatal(err)
	}
	c := Common{NATSURL: n.URL(), BlobStore: blobURL, AckWait: time.Minute, NATSStoreDir: other}
	if q, _, err := c.connect(ctx, "test", log); err == nil {
		q.Close()
		t.Fatal("connect without bootstrap accepted a --nats-store-dir that does not hold the stream")
	} else if ce := (*ConfigError)(nil); !errors.As(err, &ce) {
		t.Fatalf("connect = %v, want a configuration error", err)
	}

	c.NATSStoreDir = n.Dir // the server's own store: fine
	q, _, err = c.connect(ctx, "test", log)
	if err != nil {
		t.Fatalf("connect with the server's store dir: %v", err)
	}
	q.Close()
}
