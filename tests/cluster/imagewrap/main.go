// Command imagewrap packs one prebuilt static binary (nats-server, MinIO,
// CoreDNS, Jaeger, KEDA, pause) into an OCI image tarball with mailfwd's own
// image builder (pkg/image), so that the cluster test imports every image it
// runs and never pulls one:
//
//	go run ./tests/cluster/imagewrap -name nats -tag v2.15.2 -binary nats-server-static -bin nats-server -out nats.tar
//
// The binary lands at /usr/local/bin/<bin> (the entrypoint), the image runs as
// 65532:65532 and is tagged mailfwd.local/<name>:<tag>.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"runtime"
	"strings"

	"github.com/mailfwd/mailfwd/pkg/image"
)

// Registry is the (never contacted) registry part of every imported image.
const Registry = "mailfwd.local"

type ports []string

func (p *ports) String() string     { return strings.Join(*p, ",") }
func (p *ports) Set(v string) error { *p = append(*p, v); return nil }

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "imagewrap: %v\n", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("imagewrap", flag.ContinueOnError)
	name := fs.String("name", "", "image name (mailfwd.local/NAME)")
	tag := fs.String("tag", "", "image tag (the pinned version)")
	binary := fs.String("binary", "", "static binary to install")
	bin := fs.String("bin", "", "its name in /usr/local/bin (default: -name)")
	out := fs.String("out", "", "output image tarball")
	ca := fs.String("ca-bundle", "", "PEM CA bundle to install (default: none)")
	var ps ports
	fs.Var(&ps, "port", "exposed port NUMBER/tcp|udp (repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *name == "" || *tag == "" || *binary == "" || *out == "" {
		return errors.New("-name, -tag, -binary and -out are required")
	}
	if *bin == "" {
		*bin = *name
	}
	b, err := os.ReadFile(*binary)
	if err != nil {
		return err
	}
	var caPEM []byte
	if *ca != "" {
		if caPEM, err = os.ReadFile(*ca); err != nil {
			return err
		}
	}
	img, err := image.Build(image.Spec{
		Component: image.Component{Name: *bin, Ports: ps, Description: *name + " " + *tag + " for mailfwd's cluster test"},
		Binary:    b, CACerts: caPEM, OS: "linux", Architecture: runtime.GOARCH, Version: *tag,
	})
	if err != nil {
		return err
	}
	ref, err := image.Reference(Registry, image.Component{Name: *name}, *tag)
	if err != nil {
		return err
	}
	if err := image.WriteTarball(*out, ref, img); err != nil {
		return err
	}
	fmt.Println(*out, ref.String())
	return nil
}
