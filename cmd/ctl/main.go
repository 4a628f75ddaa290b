// Command mailfwdctl operates mailfwd (built as mailfwdctl).
package main

import (
	"os"

	"github.com/mailfwd/mailfwd/pkg/ctl"
	"github.com/mailfwd/mailfwd/pkg/daemon"
)

func main() {
	ctx, cancel := daemon.SignalContext()
	code := ctl.Execute(ctx, os.Args[1:], os.Stdout, os.Stderr)
	cancel()
	os.Exit(code)
}
