package submit

import "io"

func ioLimit(r io.Reader, n int64) io.Reader { return &io.LimitedReader{R: r, N: n} }
