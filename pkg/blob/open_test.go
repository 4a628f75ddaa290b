package blob

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
)

func TestOpen(t *testing.T) {
	tmp := t.TempDir()
	noEnv := map[string]string{}
	awsEnv := map[string]string{"AWS_ACCESS_KEY_ID": "AKIDENV", "AWS_SECRET_ACCESS_KEY": "envsecret"}
	minioEnv := map[string]string{"MINIO_ROOT_USER": "root", "MINIO_ROOT_PASSWORD": "rootsecret"}

	type want struct {
		fsDir   string // FS: expected Dir()
		fsync   bool
		s3      string // S3: expected String()
		errText string // substring of the error; empty means success
	}
	cases := []struct {
		name string
		url  string
		env  map[string]string
		want want
	}{
		// file
		{"file", "file://" + filepath.ToSlash(tmp) + "/a", noEnv, want{fsDir: filepath.Join(tmp, "a"), fsync: true}},
		{"file fsync=false", "file://" + filepath.ToSlash(tmp) + "/b?fsync=false", noEnv, want{fsDir: filepath.Join(tmp, "b"), fsync: false}},
		{"file fsync=1", "file://" + filepath.ToSlash(tmp) + "/c?fsync=1", noEnv, want{fsDir: filepath.Join(tmp, "c"), fsync: true}},
		{"file localhost", "file://localhost" + filepath.ToSlash(tmp) + "/d", noEnv, want{fsDir: filepath.Join(tmp, "d"), fsync: true}},
		{"file relative host", "file://relative/path", noEnv, want{errText: `file URL has host "relative"`}},
		{"file opaque", "file:relative/path", noEnv, want{errText: "must be absolute"}},
		{"file no path", "file://", noEnv, want{errText: "missing the directory path"}},
		{"file bad fsync", "file:///tmp/x?fsync=maybe", noEnv, want{errText: `fsync="maybe" is not a boolean`}},
		{"file unknown param", "file:///tmp/x?sync=false", noEnv, want{errText: `unknown parameter "sync"`}},
		{"file user info", "file://u:p@/tmp/x", noEnv, want{errText: "must not have user info"}},

		// s3
		{"s3 userinfo", "s3://AKID:s3cr3t@mail?endpoint=127.0.0.1:9000&secure=false", noEnv,
			want{s3: "s3 http://127.0.0.1:9000/mail/"}},
		{"s3 prefix secure default", "s3://AKID:s3cr3t@mail/bodies/v1/?endpoint=s3.example.com", noEnv,
			want{s3: "s3 https://s3.example.com/mail/bodies/v1/"}},
		{"s3 region", "s3://mail?endpoint=s3.example.com:443&region=eu-west-1", awsEnv,
			want{s3: "s3 https://s3.example.com:443/mail/"}},
		{"s3 aws env", "s3://mail?endpoint=127.0.0.1:9000&secure=false", awsEnv, want{s3: "s3 http://127.0.0.1:9000/mail/"}},
		{"s3 minio env", "s3://mail?endpoint=127.0.0.1:9000&secure=false", minioEnv, want{s3: "s3 http://127.0.0.1:9000/mail/"}},
		{"s3 escaped secret", "s3://AKID:a%2Fb%2Bc%40d@mail?endpoint=127.0.0.1:9000", noEnv, want{s3: "s3 https://127.0.0.1:9000/mail/"}},
		{"s3 no bucket", "s3://?endpoint=127.0.0.1:9000", awsEnv, want{errText: "missing the bucket"}},
		{"s3 no bucket with path", "s3:///prefix?endpoint=127.0.0.1:9000", awsEnv, want{errText: "missing the bucket"}},
		{"s3 no endpoint", "s3://mail", awsEnv, want{errText: "missing the endpoint parameter"}},
		{"s3 empty endpoint", "s3://mail?endpoint=", awsEnv, want{errText: "missing the endpoint parameter"}},
		{"s3 endpoint with scheme", "s3://mail?endpoint=http://127.0.0.1:9000", awsEnv, want{errText: "without scheme"}},
		{"s3 port on bucket", "s3://mail:9000?endpoint=127.0.0.1:9000", awsEnv, want{errText: "the server address goes in ?endpoint="}},
		{"s3 bad bucket", "s3://Mail_Bodies?endpoint=127.0.0.1:9000", awsEnv, want{errText: `invalid bucket "Mail_Bodies"`}},
		{"s3 bad secure", "s3://mail?endpoint=127.0.0.1:9000&secure=no-tls", awsEnv, want{errText: `secure="no-tls" is not a boolean`}},
		{"s3 unknown param", "s3://mail?endpoint=127.0.0.1:9000&regoin=x", awsEnv, want{errText: `unknown parameter "regoin"`}},
		{"s3 repeated param", "s3://mail?endpoint=a:1&endpoint=b:2", awsEnv, want{errText: `parameter "endpoint" given 2 times`}},
		{"s3 no credentials", "s3://mail?endpoint=127.0.0.1:9000", noEnv, want{errText: "no S3 credentials"}},
		{"s3 half env credentials", "s3://mail?endpoint=127.0.0.1:9000", map[string]string{"AWS_ACCESS_KEY_ID": "x"}, want{errText: "only one of AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"}},
		{"s3 user without secret", "s3://AKID@mail?endpoint=127.0.0.1:9000", awsEnv, want{errText: "user info must be access-key:secret-key"}},

		// general
		{"empty", "", noEnv, want{errText: "empty store URL"}},
		{"no scheme", "/var/spool/mailfwd", noEnv, want{errText: "has no scheme"}},
		{"unknown scheme", "http://127.0.0.1:9000/mail", noEnv, want{errText: `unknown scheme "http"`}},
		{"unparsable", "s3://AKID:topsecret@mail%zz?endpoint=x", noEnv, want{errText: "invalid store URL"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			getenv := func(k string) string { return tc.env[k] }
			s, err := open(context.Background(), tc.url, getenv)
			if tc.want.errText != "" {
				if err == nil {
					t.Fatalf("Open(%q) succeeded (%T), want error containing %q", tc.url, s, tc.want.errText)
				}
				if !strings.Contains(err.Error(), tc.want.errText) {
					t.Fatalf("Open(%q) error = %q, want it to contain %q", tc.url, err, tc.want.errText)
				}
				for _, secret := range []string{"s3cr3t", "topsecret", "envsecret"} {
					if strings.Contains(err.Error(), secret) {
						t.Fatalf("error %q leaks the secret", err)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("Open(%q): %v", tc.url, err)
			}
			switch st := s.(type) {
			case *FS:
				if tc.want.fsDir == "" {
					t.Fatalf("Open(%q) returned *FS, want *S3", tc.url)
				}
				if st.Dir() != tc.want.fsDir || st.fsync != tc.want.fsync {
					t.Fatalf("FS dir=%q fsync=%v, want dir=%q fsync=%v", st.Dir(), st.fsync, tc.want.fsDir, tc.want.fsync)
				}
			case *S3:
				if tc.want.s3 == "" {
					t.Fatalf("Open(%q) returned *S3, want *FS", tc.url)
				}
				if st.String() != tc.want.s3 {
					t.Fatalf("S3 = %q, want %q", st.String(), tc.want.s3)
				}
			default:
				t.Fatalf("Open returned %T", s)
			}
		})
	}
}

func TestOpenS3CredentialPrecedence(t *testing.T) {
	both := map[string]string{
		"AWS_ACCESS_KEY_ID": "aws-id", "AWS_SECRET_ACCESS_KEY": "aws-secret",
		"MINIO_ROOT_USER": "minio-id", "MINIO_ROOT_PASSWORD": "minio-secret",
	}
	for _, tc := range []struct {
		name, url  string
		env        map[string]string
		wantAccess string
	}{
		{"userinfo wins", "s3://url-id:url-secret@bkt?endpoint=h:1", both, "url-id"},
		{"aws before minio", "s3://bkt?endpoint=h:1", both, "aws-id"},
		{"minio fallback", "s3://bkt?endpoint=h:1", map[string]string{"MINIO_ROOT_USER": "minio-id", "MINIO_ROOT_PASSWORD": "minio-secret"}, "minio-id"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := open(context.Background(), tc.url, func(k string) string { return tc.env[k] })
			if err != nil {
				t.Fatal(err)
			}
			v, err := s.(*S3).client.GetCreds()
			if err != nil {
				t.Fatal(err)
			}
			if v.AccessKeyID != tc.wantAccess {
				t.Fatalf("access key = %q, want %q", v.AccessKeyID, tc.wantAccess)
			}
		})
	}
}

func TestOpenCancelledContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := open(ctx, "file://"+filepath.ToSlash(t.TempDir()), func(string) string { return "" }); err == nil {
		t.Fatal("Open with cancelled context succeeded")
	}
}
