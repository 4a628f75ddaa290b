// Command mailfwd-sendmail is a drop-in sendmail(8) for programs that call
// /usr/sbin/sendmail or /usr/lib/sendmail (mailx, cron, scripts): it submits
// the message over SMTP to a mailfwd ingress and exits with sendmail's exit
// codes. Invoked as mailq it lists the queue; as newaliases it says why that
// is not needed. See pkg/submit and the README.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/mailfwd/mailfwd/pkg/submit"
)

func main() {
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := submit.Main(ctx, os.Args[0], os.Args[1:], submit.IO{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv})
	cancel()
	os.Exit(code)
}
