// Command mailfwdctl operates mailfwd (built as mailfwdctl).
package main

import (
	"os"

	"github.com/mailfwd/mailfwd/pkg/config"
	"github.com/mailfwd/mailfwd/pkg/ctl"
)

func main() {
	ctx, cancel := config.SignalContext()
	code := ctl.Execute(ctx, os.Args[1:], os.Stdout, os.Stderr)
	cancel()
	os.Exit(code)
}
