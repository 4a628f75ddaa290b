package smtptrace

import (
	"errors"
	"flag"
	"fmt"
)

// Limits bound what tracing can cost a process, whatever the peers send.
type Limits struct {
	MaxLineBytes       int // bytes of one recorded line; the rest is counted, not logged
	MaxLinesPerSession int // records of one traced session
	MaxBytesPerSecond  int // recorded bytes per second, all sessions of this process together
	MaxTraces          int // settings honoured at once (the oldest first)
	MaxTracedSessions  int // sessions recorded at once in this process
}

// DefaultLimits are the defaults of the --trace-* flags.
func DefaultLimits() Limits {
	return Limits{
		MaxLineBytes:       1000,
		MaxLinesPerSession: 2000,
		MaxBytesPerSecond:  64 << 10,
		MaxTraces:          16,
		MaxTracedSessions:  64,
	}
}

// Register adds the --trace-* flags, defaulting to DefaultLimits.
func (l *Limits) Register(fs *flag.FlagSet) {
	d := DefaultLimits()
	fs.IntVar(&l.MaxLineBytes, "trace-max-line-bytes", d.MaxLineBytes, "SMTP trace: bytes of one recorded line (longer lines are cut)")
	fs.IntVar(&l.MaxLinesPerSession, "trace-max-lines-per-session", d.MaxLinesPerSession, "SMTP trace: records of one traced session")
	fs.IntVar(&l.MaxBytesPerSecond, "trace-max-bytes-per-second", d.MaxBytesPerSecond, "SMTP trace: recorded bytes per second for the whole process (the excess is dropped and counted)")
	fs.IntVar(&l.MaxTraces, "trace-max-traces", d.MaxTraces, "SMTP trace: trace settings honoured at once")
	fs.IntVar(&l.MaxTracedSessions, "trace-max-traced-sessions", d.MaxTracedSessions, "SMTP trace: sessions recorded at once by this process")
}

// Validate checks the limits once, before anything starts.
func (l Limits) Validate() error {
	var errs []error
	check := func(name string, v, lo, hi int) {
		if v < lo || v > hi {
			errs = append(errs, fmt.Errorf("--%s %d: want %d..%d", name, v, lo, hi))
		}
	}
	check("trace-max-line-bytes", l.MaxLineBytes, 80, 64<<10)
	check("trace-max-lines-per-session", l.MaxLinesPerSession, 10, 1<<20)
	check("trace-max-bytes-per-second", l.MaxBytesPerSecond, 1<<10, 64<<20)
	check("trace-max-traces", l.MaxTraces, 1, 1000)
	check("trace-max-traced-sessions", l.MaxTracedSessions, 1, 100000)
	if l.MaxBytesPerSecond < l.MaxLineBytes {
		errs = append(errs, fmt.Errorf("--trace-max-bytes-per-second %d is below --trace-max-line-bytes %d: long lines could never be recorded", l.MaxBytesPerSecond, l.MaxLineBytes))
	}
	return errors.Join(errs...)
}
