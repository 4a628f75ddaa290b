package ctl

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/mailfwd/mailfwd/pkg/testenv"
)

// TestDoctorClockSkew: against the NATS server's own time; this host's
// clock moved a minute ahead fails the check, a moment does not.
func TestDoctorClockSkew(t *testing.T) {
	n := testenv.StartNATS(t)
	BootstrapQueue(t, n.URL(), 0)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, tc := range []struct {
		offset time.Duration
		want   string
	}{{0, statusOK}, {time.Minute, statusFail}, {-time.Minute, statusFail}} {
		d := &doctor{g: &globals{natsURL: n.URL(), timeout: 30 * time.Second, out: io.Discard, errOut: io.Discard},
			ackWait: 2 * time.Minute, replicas: 1, maxClockSkew: 2 * time.Second, checkTimeout: 5 * time.Second,
			now: func() time.Time { return time.Now().Add(tc.offset) }}
		nc := d.checkNATS()
		if nc == nil {
			t.Fatalf("nats: %+v", d.checks)
		}
		nc.Close()
		d.checkQueue(ctx)
		var got checkResult
		for _, c := range d.checks {
			if c.Check == "clock" {
				got = c
			}
		}
		if got.Status != tc.want {
			t.Errorf("clock %s off: %s %s, want %s", tc.offset, got.Status, got.Detail, tc.want)
		}
		if tc.offset > 0 && !strings.Contains(got.Detail, "ahead of") || tc.offset < 0 && !strings.Contains(got.Detail, "behind") {
			t.Errorf("clock %s off, detail %q", tc.offset, got.Detail)
		}
	}
}
