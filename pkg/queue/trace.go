package queue

import (
	"context"
	"fmt"

	"github.com/mailfwd/mailfwd/pkg/smtptrace"
)

// TraceBucket opens the trace settings bucket (smtptrace.BucketConfig, made
// by Bootstrap) for smtptrace.NewWatcher and smtptrace.NewStore.
func (q *Queue) TraceBucket(ctx context.Context) (smtptrace.Bucket, error) {
	kv, err := q.js.KeyValue(ctx, smtptrace.BucketName)
	if err != nil {
		return nil, fmt.Errorf("queue: kv %s: %w (run mailfwdctl bootstrap)", smtptrace.BucketName, err)
	}
	return kv, nil
}
