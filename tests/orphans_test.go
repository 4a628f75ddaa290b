package tests

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mailfwd/mailfwd/pkg/blob"
	"github.com/mailfwd/mailfwd/pkg/envelope"
)

// mailfwdctl queue release computes the new deadline from the workers'
// --queue-return (which they record at start), not from its own default of
// five days.
func TestReleaseUsesTheWorkersQueueReturn(t *testing.T) {
	e := newEnv(t, envOptions{blob: "fs", queueReturn: 4 * time.Second})
	e.mustCtl(t, "queue", "hold", "--domain", "beta.test")
	waitFor(t, "workers see the hold", 10*time.Second, func() bool { return strings.Contains(e.logs.String(), "domains on hold") })
	res := send(e.smtp, "", "sender@alpha.test", []string{"held@beta.test"}, message("held", "held@x", "wait for me\r\n"), nil)
	if res.FinalCode != 250 {
		t.Fatalf("send: %d %v", res.FinalCode, res.Err)
	}
	waitFor(t, "message parked as held", 20*time.Second, func() bool {
		out, _ := e.ctlRun("queue", "stats", "-o", "json")
		return strings.Contains(out, `"held": 1`)
	})
	out := e.mustCtl(t, "queue", "release", "--domain", "beta.test", "--extend", "1m")
	if !strings.Contains(out, "the workers' --queue-return 4s") {
		t.Fatalf("release did not use the workers' --queue-return 4s:\n%s", out)
	}
	waitFor(t, "released mail delivered", 30*time.Second, func() bool {
		return e.sinks["127.0.0.3"].RecipientsDelivered()["held@beta.test"] == 1
	})
}

// mailfwdctl queue orphans lists a body no envelope refers to, and removes
// it with --remove --yes; the bodies of queued mail stay.
func TestCtlListsAndRemovesOrphans(t *testing.T) {
	e := newEnv(t, envOptions{blob: "fs"})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	store, err := blob.Open(ctx, e.blobURL)
	if err != nil {
		t.Fatal(err)
	}
	orphan := envelope.NewQueueID()
	if err := store.Put(ctx, orphan, []byte("Subject: lost\r\n\r\nx\r\n")); err != nil {
		t.Fatal(err)
	}
	dir := strings.TrimPrefix(e.blobURL, "file://")
	old := time.Now().Add(-2 * time.Hour)
	aged := false
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.Name() == orphan {
			aged = os.Chtimes(p, old, old) == nil
		}
		return nil
	})
	if !aged {
		t.Fatal("could not age the orphan body")
	}
	out := e.mustCtl(t, "queue", "orphans", "--blob-store", e.blobURL, "-o", "json")
	if !strings.Contains(out, `"key": "`+orphan+`"`) || !strings.Contains(out, `"kind": "body"`) {
		t.Fatalf("orphans listing does not show %s:\n%s", orphan, out)
	}
	if out, code := e.ctlRun("queue", "orphans", "--blob-store", e.blobURL, "--remove"); code == 0 {
		t.Fatalf("remove without --yes and without a terminal succeeded:\n%s", out)
	}
	out = e.mustCtl(t, "queue", "orphans", "--blob-store", e.blobURL, "--remove", "--yes")
	if !strings.Contains(out, "removed 1 orphans") {
		t.Fatalf("remove: %s", out)
	}
	if _, err := store.Get(ctx, orphan); err == nil {
		t.Fatal("orphan body still stored after --remove")
	}
}
