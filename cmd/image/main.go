// Command image builds mailfwd's container images (ingress, worker, mailfwdctl, mailfwd-sendmail)
// as image tarballs without a container engine: `make image`, or
//
//	go run ./cmd/image [-out dist/images] [-registry registry.example.com/mailfwd] [-tag 0.1.0] [-arch amd64] [-only mailfwd-worker]
//
// Each image is dist/images/<name>.tar; load it with `docker load -i`,
// `kind load image-archive`, or push it with `crane push FILE REF`.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/mailfwd/mailfwd/pkg/image"
)

type config struct {
	out, registry, tag, arch, caBundle, only, chart, revision, source string
	epoch                                                             int64
}

func main() {
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:])
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "image: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	var c config
	fs := flag.NewFlagSet("image", flag.ContinueOnError)
	fs.StringVar(&c.out, "out", "dist/images", "output directory for <name>.tar")
	fs.StringVar(&c.registry, "registry", "mailfwd.local", "registry and path prefix of the image references (the chart's image.registry); the archives can be pushed under any name")
	fs.StringVar(&c.tag, "tag", "", "image tag (default: appVersion of -chart)")
	fs.StringVar(&c.chart, "chart", "charts/mailfwd/Chart.yaml", "Chart.yaml whose appVersion is the default tag")
	fs.StringVar(&c.arch, "arch", runtime.GOARCH, "GOARCH of the images (GOOS is linux)")
	fs.StringVar(&c.caBundle, "ca-bundle", "/etc/ssl/certs/ca-certificates.crt", "PEM CA bundle to install in the images; empty leaves it out")
	fs.StringVar(&c.only, "only", "", "comma-separated image names to build (default: all)")
	fs.StringVar(&c.revision, "revision", "", "VCS revision for the org.opencontainers.image.revision label (default: git rev-parse HEAD)")
	fs.StringVar(&c.source, "source", "https://github.com/mailfwd/mailfwd", "source repository URL for the labels")
	fs.Int64Var(&c.epoch, "source-date-epoch", envInt64("SOURCE_DATE_EPOCH"), "creation time (Unix seconds) of images and files; default $SOURCE_DATE_EPOCH or 0")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if c.tag == "" {
		v, err := appVersion(c.chart)
		if err != nil {
			return fmt.Errorf("no -tag and %w", err)
		}
		c.tag = v
	}
	if c.revision == "" {
		c.revision = gitRevision(ctx)
	}
	var ca []byte
	if c.caBundle != "" {
		b, err := os.ReadFile(c.caBundle)
		if err != nil {
			return fmt.Errorf("CA bundle: %w (use -ca-bundle '' to build without one)", err)
		}
		ca = b
	}
	comps, err := selected(c.only)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(c.out, 0o755); err != nil {
		return fmt.Errorf("output directory: %w", err)
	}
	work, err := os.MkdirTemp("", "mailfwd-image-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)

	gb := image.GoBuild{Dir: ".", OS: "linux", Arch: c.arch, LDFlags: "-X github.com/mailfwd/mailfwd/pkg/control.Version=" + c.tag}
	for _, comp := range comps {
		start := time.Now()
		bin, err := gb.Build(ctx, comp, filepath.Join(work, comp.Name))
		if err != nil {
			return err
		}
		img, err := image.Build(image.Spec{
			Component: comp, Binary: bin, CACerts: ca,
			OS: "linux", Architecture: c.arch,
			Version: c.tag, Revision: c.revision, Source: c.source,
			Created: time.Unix(c.epoch, 0),
		})
		if err != nil {
			return err
		}
		ref, err := image.Reference(c.registry, comp, c.tag)
		if err != nil {
			return err
		}
		out := filepath.Join(c.out, comp.Name+".tar")
		if err := image.WriteTarball(out, ref, img); err != nil {
			return err
		}
		digest, err := img.Digest()
		if err != nil {
			return err
		}
		fmt.Printf("%s  %s  %s  (%s)\n", out, ref, digest, time.Since(start).Round(time.Millisecond))
	}
	return nil
}

func selected(only string) ([]image.Component, error) {
	if only == "" {
		return image.Components(), nil
	}
	var out []image.Component
	for _, n := range strings.Split(only, ",") {
		c, ok := image.ComponentByName(strings.TrimSpace(n))
		if !ok {
			var names []string
			for _, c := range image.Components() {
				names = append(names, c.Name)
			}
			return nil, fmt.Errorf("-only: unknown image %q (known: %s)", n, strings.Join(names, ", "))
		}
		out = append(out, c)
	}
	return out, nil
}

// appVersion reads appVersion from a Chart.yaml (a top-level scalar).
func appVersion(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", fmt.Errorf("cannot read the chart's appVersion: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "appVersion:"); ok {
			v = strings.Trim(strings.TrimSpace(v), `"'`)
			if v != "" {
				return v, nil
			}
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	return "", errors.New(path + " has no appVersion")
}

func gitRevision(ctx context.Context) string {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "git", "rev-parse", "HEAD").Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

func envInt64(k string) int64 {
	var n int64
	if v := os.Getenv(k); v != "" {
		if _, err := fmt.Sscan(v, &n); err != nil {
			return 0
		}
	}
	return n
}
