package blob

// StreamBufferBytes is what one S3 PutStream holds in memory (one multipart
// part); the ingress counts it against its in-flight budget.
func (s *S3) StreamBufferBytes() int64 { return s3StreamPartSize }

// StreamBufferBytes is what one FS PutStream holds in memory (io.Copy's buffer).
func (f *FS) StreamBufferBytes() int64 { return 32 << 10 }
