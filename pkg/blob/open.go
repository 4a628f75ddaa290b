package blob

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// Open picks an implementation by URL scheme:
//
//	file:///abs/path[?fsync=false]
//	    fsync defaults to true; the directory is created; files are sharded
//	    into 256 subdirectories by a hash of the key.
//	s3://[key:secret@]bucket[/prefix]?endpoint=host:port[&secure=false][&region=r]
//	    secure defaults to true. Credentials come from the URL user info, else
//	    env AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, else
//	    MINIO_ROOT_USER/MINIO_ROOT_PASSWORD.
//
// Open validates the URL and returns an error naming what is wrong; it does
// not contact the store (use Check or Bootstrap for that). Error messages never
// contain the secret key.
func Open(ctx context.Context, rawURL string) (Store, error) {
	return open(ctx, rawURL, os.Getenv)
}

func open(ctx context.Context, rawURL string, getenv func(string) string) (Store, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("blob: open: %w", err)
	}
	if strings.TrimSpace(rawURL) == "" {
		return nil, errors.New("blob: open: empty store URL (want file:///path or s3://bucket?endpoint=host:port)")
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		// url.Error repeats the whole URL, which may hold a secret.
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err
		}
		return nil, fmt.Errorf("blob: open: invalid store URL: %v", err)
	}
	switch u.Scheme {
	case "file":
		s, err := openFS(u)
		if err != nil {
			return nil, fmt.Errorf("blob: open %s: %w", u.Redacted(), err)
		}
		return s, nil
	case "s3":
		s, err := openS3(u, getenv)
		if err != nil {
			return nil, fmt.Errorf("blob: open %s: %w", u.Redacted(), err)
		}
		return s, nil
	case "":
		return nil, errors.New("blob: open: store URL has no scheme (want file:///path or s3://bucket?endpoint=host:port)")
	default:
		return nil, fmt.Errorf("blob: open: unknown scheme %q in store URL (want file or s3)", u.Scheme)
	}
}

func checkParams(q url.Values, known ...string) error {
	for k, v := range q {
		if !slices.Contains(known, k) {
			return fmt.Errorf("unknown parameter %q (known: %s)", k, strings.Join(known, ", "))
		}
		if len(v) > 1 {
			return fmt.Errorf("parameter %q given %d times", k, len(v))
		}
	}
	return nil
}

func boolParam(q url.Values, name string, def bool) (bool, error) {
	if !q.Has(name) {
		return def, nil
	}
	b, err := strconv.ParseBool(q.Get(name))
	if err != nil {
		return false, fmt.Errorf("parameter %s=%q is not a boolean (want true or false)", name, q.Get(name))
	}
	return b, nil
}

func openFS(u *url.URL) (*FS, error) {
	const want = "want file:///absolute/path"
	if u.Opaque != "" {
		return nil, fmt.Errorf("file URL path must be absolute, %s", want)
	}
	if u.User != nil {
		return nil, fmt.Errorf("file URL must not have user info, %s", want)
	}
	if u.Host != "" && u.Host != "localhost" {
		return nil, fmt.Errorf("file URL has host %q, %s", u.Host, want)
	}
	if u.Path == "" || !path.IsAbs(u.Path) {
		return nil, fmt.Errorf("file URL is missing the directory path, %s", want)
	}
	q := u.Query()
	if err := checkParams(q, "fsync"); err != nil {
		return nil, err
	}
	fsync, err := boolParam(q, "fsync", true)
	if err != nil {
		return nil, err
	}
	return NewFS(filepath.FromSlash(u.Path), fsync)
}

func openS3(u *url.URL, getenv func(string) string) (*S3, error) {
	if u.Opaque != "" {
		return nil, errors.New("s3 URL must look like s3://bucket[/prefix]?endpoint=host:port")
	}
	bucket := u.Host
	if bucket == "" {
		return nil, errors.New("s3 URL is missing the bucket (s3://bucket?endpoint=host:port)")
	}
	if strings.Contains(bucket, ":") {
		return nil, fmt.Errorf("s3 URL bucket %q contains ':'; the server address goes in ?endpoint=host:port", bucket)
	}
	q := u.Query()
	if err := checkParams(q, "endpoint", "secure", "region"); err != nil {
		return nil, err
	}
	endpoint := q.Get("endpoint")
	if endpoint == "" {
		return nil, errors.New("s3 URL is missing the endpoint parameter (?endpoint=host:port)")
	}
	if strings.Contains(endpoint, "://") {
		return nil, fmt.Errorf("s3 URL endpoint %q must be host:port without scheme (use secure=false for http)", endpoint)
	}
	secure, err := boolParam(q, "secure", true)
	if err != nil {
		return nil, err
	}
	access, secret, err := s3Credentials(u, getenv)
	if err != nil {
		return nil, err
	}
	return NewS3(S3Config{
		Endpoint:  endpoint,
		Bucket:    bucket,
		Prefix:    u.Path,
		Region:    q.Get("region"),
		AccessKey: access,
		SecretKey: secret,
		Secure:    secure,
	})
}

func s3Credentials(u *url.URL, getenv func(string) string) (access, secret string, err error) {
	if u.User != nil {
		secret, ok := u.User.Password()
		if u.User.Username() == "" || !ok || secret == "" {
			return "", "", errors.New("s3 URL user info must be access-key:secret-key")
		}
		return u.User.Username(), secret, nil
	}
	for _, pair := range [][2]string{
		{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"},
		{"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"},
	} {
		a, s := getenv(pair[0]), getenv(pair[1])
		switch {
		case a != "" && s != "":
			return a, s, nil
		case a != "" || s != "":
			return "", "", fmt.Errorf("only one of %s and %s is set", pair[0], pair[1])
		}
	}
	return "", "", errors.New("no S3 credentials: put access-key:secret-key in the URL user info or set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (or MINIO_ROOT_USER/MINIO_ROOT_PASSWORD)")
}
