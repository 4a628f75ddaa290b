package image

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// GoBuild describes how to compile one component's static binary.
type GoBuild struct {
	// Go is the go command (default "go").
	Go string
	// Dir is the module root the package path is relative to.
	Dir string
	// OS and Arch are GOOS and GOARCH.
	OS, Arch string
	// LDFlags are extra linker flags (-s -w are always set).
	LDFlags string
}

// Build compiles c.Package with CGO_ENABLED=0 and -trimpath into out and
// returns the binary's content.
func (g GoBuild) Build(ctx context.Context, c Component, out string) ([]byte, error) {
	goCmd := g.Go
	if goCmd == "" {
		goCmd = "go"
	}
	ldflags := strings.TrimSpace("-s -w " + g.LDFlags)
	cmd := exec.CommandContext(ctx, goCmd, "build", "-trimpath", "-buildvcs=false", "-ldflags", ldflags, "-o", out, c.Package)
	cmd.Dir = g.Dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS="+g.OS, "GOARCH="+g.Arch, "GOFLAGS=-mod=readonly")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.Stdout = &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("go build %s (GOOS=%s GOARCH=%s): %w\n%s", c.Package, g.OS, g.Arch, err, stderr.String())
	}
	bin, err := os.ReadFile(out)
	if err != nil {
		return nil, fmt.Errorf("read built binary: %w", err)
	}
	return bin, nil
}
