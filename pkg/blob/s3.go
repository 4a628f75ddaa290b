package blob

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/minio/minio-go/v7/pkg/s3utils"
)

// S3Config configures an S3 store.
type S3Config struct {
	// Endpoint is host[:port] of the S3 API, without scheme.
	Endpoint string
	// Bucket holds the bodies.
	Bucket string
	// Prefix is prepended to every key ("mail" and "mail/" both store key k
	// as "mail/k"). Empty means the bucket root.
	Prefix string
	// Region is optional; empty lets the client discover it.
	Region string
	// AccessKey and SecretKey are static credentials; both empty means
	// anonymous requests.
	AccessKey, SecretKey string
	// Secure selects https.
	Secure bool
}

// S3 is a Store backed by an S3-compatible object store.
type S3 struct {
	client *minio.Client
	core   minio.Core
	bucket string
	prefix string
	region string
	desc   string
}

var _ Store = (*S3)(nil)
var _ Bootstrapper = (*S3)(nil)

// NewS3 returns a Store using cfg. It does not contact the server; use Check
// or Bootstrap for that.
func NewS3(cfg S3Config) (*S3, error) {
	if cfg.Endpoint == "" {
		return nil, errors.New("blob: s3: missing endpoint")
	}
	if strings.Contains(cfg.Endpoint, "/") {
		return nil, fmt.Errorf("blob: s3: endpoint %q must be host[:port] without scheme or path", cfg.Endpoint)
	}
	if cfg.Bucket == "" {
		return nil, errors.New("blob: s3: missing bucket")
	}
	if err := s3utils.CheckValidBucketNameStrict(cfg.Bucket); err != nil {
		return nil, fmt.Errorf("blob: s3: invalid bucket %q: %w", cfg.Bucket, err)
	}
	if (cfg.AccessKey == "") != (cfg.SecretKey == "") {
		return nil, errors.New("blob: s3: access key and secret key must be given together")
	}
	prefix := strings.Trim(cfg.Prefix, "/")
	if prefix != "" {
		prefix += "/"
		if err := s3utils.CheckValidObjectNamePrefix(prefix); err != nil {
			return nil, fmt.Errorf("blob: s3: invalid prefix %q: %w", cfg.Prefix, err)
		}
	}
	client, err := minio.New(cfg.Endpoint, &minio.Options{
		Creds:  credentials.NewStaticV4(cfg.AccessKey, cfg.SecretKey, ""),
		Secure: cfg.Secure,
		Region: cfg.Region,
	})
	if err != nil {
		return nil, fmt.Errorf("blob: s3: client for %s: %w", cfg.Endpoint, err)
	}
	scheme := "https"
	if !cfg.Secure {
		scheme = "http"
	}
	return &S3{
		client: client,
		core:   minio.Core{Client: client},
		bucket: cfg.Bucket,
		prefix: prefix,
		region: cfg.Region,
		desc:   fmt.Sprintf("s3 %s://%s/%s/%s", scheme, cfg.Endpoint, cfg.Bucket, prefix),
	}, nil
}

// String describes the store for logs (no credentials).
func (s *S3) String() string { return s.desc }

func (s *S3) object(key string) string { return s.prefix + key }

// Put implements Store.
func (s *S3) Put(ctx context.Context, key string, data []byte) error {
	if err := ValidateKey(key); err != nil {
		return err
	}
	_, err := s.client.PutObject(ctx, s.bucket, s.object(key), bytes.NewReader(data), int64(len(data)),
		minio.PutObjectOptions{ContentType: "application/octet-stream"})
	if err != nil {
		return fmt.Errorf("blob: s3: put %q: %w", key, err)
	}
	return nil
}

// Get implements Store.
func (s *S3) Get(ctx context.Context, key string) ([]byte, error) {
	if err := ValidateKey(key); err != nil {
		return nil, err
	}
	body, info, _, err := s.core.GetObject(ctx, s.bucket, s.object(key), minio.GetObjectOptions{})
	if err != nil {
		if minio.ToErrorResponse(err).Code == minio.NoSuchKey {
			return nil, fmt.Errorf("blob: s3: get %q: %w", key, ErrNotFound)
		}
		return nil, fmt.Errorf("blob: s3: get %q: %w", key, err)
	}
	defer body.Close()
	buf := bytes.NewBuffer(make([]byte, 0, max(info.Size, 0)+bytes.MinRead))
	if _, err := buf.ReadFrom(body); err != nil {
		return nil, fmt.Errorf("blob: s3: get %q: read body: %w", key, err)
	}
	if info.Size >= 0 && int64(buf.Len()) != info.Size {
		return nil, fmt.Errorf("blob: s3: get %q: read %d bytes, object has %d: %w", key, buf.Len(), info.Size, io.ErrUnexpectedEOF)
	}
	return buf.Bytes(), nil
}

// s3StreamPartSize is the multipart part size of PutStream: one part is
// held in memory per upload, so this bounds a streamed body's buffer (S3's
// minimum part size; every part but the last must be at least this).
const s3StreamPartSize = 5 << 20

// s3PartPool recycles part buffers: many concurrent uploads of large
// bodies would otherwise allocate (and leave to the GC) 5 MiB per upload.
var s3PartPool = sync.Pool{New: func() any { b := make([]byte, s3StreamPartSize); return &b }}

// s3MaxParts is S3's limit of parts per multipart upload.
const s3MaxParts = 10000

// PutStream implements Store. A body that fits in one part is one PUT of
// known size; a longer one a multipart upload, part by part through one
// pooled buffer. A failed read (or store error) aborts the upload, so
// nothing is stored under key.
func (s *S3) PutStream(ctx context.Context, key string, r io.Reader) (int64, error) {
	if err := ValidateKey(key); err != nil {
		return 0, err
	}
	bp := s3PartPool.Get().(*[]byte)
	defer s3PartPool.Put(bp)
	buf := *bp
	obj := s.object(key)
	opts := minio.PutObjectOptions{ContentType: "application/octet-stream"}
	n, eof, err := fill(r, buf)
	if err != nil {
		return 0, fmt.Errorf("blob: s3: put stream %q: read: %w", key, err)
	}
	if eof {
		if _, err := s.client.PutObject(ctx, s.bucket, obj, bytes.NewReader(buf[:n]), int64(n), opts); err != nil {
			return 0, fmt.Errorf("blob: s3: put stream %q: %w", key, err)
		}
		return int64(n), nil
	}
	uploadID, err := s.core.NewMultipartUpload(ctx, s.bucket, obj, opts)
	if err != nil {
		return 0, fmt.Errorf("blob: s3: put stream %q: start multipart upload: %w", key, err)
	}
	committed := false
	defer func() {
		if !committed {
			actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
			defer cancel()
			_ = s.core.AbortMultipartUpload(actx, s.bucket, obj, uploadID)
		}
	}()
	var parts []minio.CompletePart
	var total int64
	for {
		if len(parts) == s3MaxParts {
			return 0, fmt.Errorf("blob: s3: put stream %q: more than %d parts of %d bytes", key, s3MaxParts, s3StreamPartSize)
		}
		p, err := s.core.PutObjectPart(ctx, s.bucket, obj, uploadID, len(parts)+1, bytes.NewReader(buf[:n]), int64(n), minio.PutObjectPartOptions{})
		if err != nil {
			return 0, fmt.Errorf("blob: s3: put stream %q: part %d: %w", key, len(parts)+1, err)
		}
		parts = append(parts, minio.CompletePart{PartNumber: len(parts) + 1, ETag: p.ETag})
		total += int64(n)
		if eof {
			break
		}
		if n, eof, err = fill(r, buf); err != nil {
			return 0, fmt.Errorf("blob: s3: put stream %q: read: %w", key, err)
		}
		if n == 0 {
			break
		}
	}
	if _, err := s.core.CompleteMultipartUpload(ctx, s.bucket, obj, uploadID, parts, opts); err != nil {
		return 0, fmt.Errorf("blob: s3: put stream %q: complete: %w", key, err)
	}
	committed = true
	return total, nil
}

// fill reads r into buf until buf is full or r ends. Only io.EOF is an end:
// any other error, io.ErrUnexpectedEOF included (go-smtp's DATA reader
// returns it when the client goes away), is r's failure and returned.
func fill(r io.Reader, buf []byte) (n int, eof bool, err error) {
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if err == io.EOF {
			return n, true, nil
		}
		if err != nil {
			return n, false, err
		}
	}
	return n, false, nil
}

// Open implements Store.
func (s *S3) Open(ctx context.Context, key string) (io.ReadCloser, int64, error) {
	if err := ValidateKey(key); err != nil {
		return nil, 0, err
	}
	body, info, _, err := s.core.GetObject(ctx, s.bucket, s.object(key), minio.GetObjectOptions{})
	if err != nil {
		if minio.ToErrorResponse(err).Code == minio.NoSuchKey {
			return nil, 0, fmt.Errorf("blob: s3: open %q: %w", key, ErrNotFound)
		}
		return nil, 0, fmt.Errorf("blob: s3: open %q: %w", key, err)
	}
	return body, info.Size, nil
}

// List implements Store: the objects under the store's prefix whose names
// are valid keys.
func (s *S3) List(ctx context.Context, fn func(key string, modified time.Time) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // stops the listing goroutine when fn ends it early
	for obj := range s.client.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{Prefix: s.prefix, Recursive: true}) {
		if obj.Err != nil {
			return fmt.Errorf("blob: s3: list: %w", obj.Err)
		}
		key := strings.TrimPrefix(obj.Key, s.prefix)
		if ValidateKey(key) != nil {
			continue
		}
		if err := fn(key, obj.LastModified); err != nil {
			return err
		}
	}
	return ctx.Err()
}

// Delete implements Store.
func (s *S3) Delete(ctx context.Context, key string) error {
	if err := ValidateKey(key); err != nil {
		return err
	}
	err := s.client.RemoveObject(ctx, s.bucket, s.object(key), minio.RemoveObjectOptions{})
	if err != nil && minio.ToErrorResponse(err).Code != minio.NoSuchKey {
		return fmt.Errorf("blob: s3: delete %q: %w", key, err)
	}
	return nil
}

// Check implements Store: the bucket must exist and be accessible with the
// configured credentials (one HEAD request).
func (s *S3) Check(ctx context.Context) error {
	ok, err := s.client.BucketExists(ctx, s.bucket)
	if err != nil {
		return fmt.Errorf("blob: s3: check bucket %q: %w", s.bucket, err)
	}
	if !ok {
		return fmt.Errorf("blob: s3: check: bucket %q does not exist (run bootstrap)", s.bucket)
	}
	return nil
}

// Bootstrap creates the bucket if it does not exist. Idempotent; concurrent
// callers racing to create it all succeed.
func (s *S3) Bootstrap(ctx context.Context) error {
	ok, err := s.client.BucketExists(ctx, s.bucket)
	if err != nil {
		return fmt.Errorf("blob: s3: bootstrap: check bucket %q: %w", s.bucket, err)
	}
	if ok {
		return nil
	}
	err = s.client.MakeBucket(ctx, s.bucket, minio.MakeBucketOptions{Region: s.region})
	if err == nil {
		return nil
	}
	switch minio.ToErrorResponse(err).Code {
	case minio.BucketAlreadyOwnedByYou:
		return nil
	case minio.BucketAlreadyExists:
		// Either another pod won the race (fine) or someone else owns the
		// name; the second BucketExists tells which.
		if ok, eerr := s.client.BucketExists(ctx, s.bucket); eerr == nil && ok {
			return nil
		}
	}
	return fmt.Errorf("blob: s3: bootstrap: create bucket %q: %w", s.bucket, err)
}
