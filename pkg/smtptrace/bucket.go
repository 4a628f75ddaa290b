package smtptrace

import (
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// BucketName is the KV bucket of trace settings.
const BucketName = "MAIL_TRACE"

// markerTTL is how long the server keeps the marker of a key that expired
// (watchers see it as a removal).
const markerTTL = time.Minute

// BucketConfig is the bucket as Bootstrap makes it: values expire after
// MaxDuration at the latest (the max age), and each key carries its own
// TTL of the trace's duration (LimitMarkerTTL enables per-key TTLs and
// tells the watchers when a key expires).
func BucketConfig(replicas int) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:         BucketName,
		Description:    "mailfwd: live SMTP traces (mailfwdctl trace)",
		Storage:        jetstream.FileStorage,
		Replicas:       replicas,
		TTL:            MaxDuration + time.Minute,
		LimitMarkerTTL: markerTTL,
	}
}
