// Package image builds mailfwd's container images without a container engine:
// a statically linked Go binary as the only layer on an empty base (ko-style),
// run as the numeric non-root user 65532, written as an image tarball that
// `docker load`, `podman load`, `kind load image-archive` and `crane push`
// accept.
//
// The layer holds:
//
//	/usr/local/bin/<name>                 the binary, 0755, owned by root
//	/etc/ssl/certs/ca-certificates.crt    CA roots for S3 over HTTPS and STARTTLS (optional)
//	/tmp                                  1777 (the chart mounts an emptyDir there)
//
// There is no /etc/passwd: the user is numeric. Entries carry a fixed
// modification time so that the same inputs give the same image digest.
package image

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

const (
	// UID and GID the images run as (the "nonroot" id of distroless).
	UID = 65532
	GID = 65532
	// BinDir is where the binary is installed.
	BinDir = "/usr/local/bin"
	// CACertsPath is where the CA bundle goes (Go's crypto/x509 looks there first on Linux).
	CACertsPath = "/etc/ssl/certs/ca-certificates.crt"
	// WorkingDir of the containers.
	WorkingDir = "/"
)

// User is the image config's User field.
func User() string { return strconv.Itoa(UID) + ":" + strconv.Itoa(GID) }

// Component is one of mailfwd's images.
type Component struct {
	// Name is both the image name and the binary name, e.g. "mailfwd-ingress".
	Name string
	// Package is the Go package of the command, relative to the module root.
	Package string
	// Ports are the ports the command listens on with the chart's settings
	// ("2525/tcp"), recorded as the image's ExposedPorts.
	Ports []string
	// Description goes into org.opencontainers.image.description.
	Description string
}

// Entrypoint is the absolute path of the component's binary in the image.
func (c Component) Entrypoint() string { return path.Join(BinDir, c.Name) }

// Components lists the images `make image` builds.
func Components() []Component {
	return []Component{
		{Name: "mailfwd-ingress", Package: "./cmd/ingress", Ports: []string{"2525/tcp", "8080/tcp"},
			Description: "mailfwd SMTP ingress: accepts mail, stores bodies in S3, queues envelopes in NATS JetStream"},
		{Name: "mailfwd-worker", Package: "./cmd/worker", Ports: []string{"8081/tcp"},
			Description: "mailfwd delivery worker: delivers queued mail by MX lookup or static route"},
		{Name: "mailfwdctl", Package: "./cmd/ctl",
			Description: "mailfwdctl: queue operations, policy ConfigMaps, bootstrap"},
		{Name: "mailfwd-sendmail", Package: "./cmd/sendmail",
			Description: "mailfwd-sendmail: a drop-in /usr/sbin/sendmail that submits to a mailfwd ingress (COPY it into application images)"},
	}
}

// ComponentByName finds a component by its image name.
func ComponentByName(n string) (Component, bool) {
	for _, c := range Components() {
		if c.Name == n {
			return c, true
		}
	}
	return Component{}, false
}

// Spec is everything one image is built from.
type Spec struct {
	Component Component
	// Binary is the statically linked executable (CGO_ENABLED=0).
	Binary []byte
	// CACerts is a PEM bundle installed at CACertsPath; nil leaves it out.
	CACerts []byte
	// OS and Architecture of the binary (GOOS, GOARCH).
	OS, Architecture string
	// Version is the image tag and org.opencontainers.image.version.
	Version string
	// Revision (VCS commit) and Source (repository URL) for the labels; optional.
	Revision, Source string
	// Created is the image's creation time and every file's modification
	// time; the zero value means the Unix epoch (reproducible builds).
	Created time.Time
}

func (s Spec) validate() error {
	var errs []error
	if s.Component.Name == "" || strings.ContainsAny(s.Component.Name, "/: ") {
		errs = append(errs, fmt.Errorf("component name %q is not a plain image name", s.Component.Name))
	}
	if len(s.Binary) == 0 {
		errs = append(errs, errors.New("binary is empty"))
	}
	if s.OS == "" || s.Architecture == "" {
		errs = append(errs, errors.New("OS and Architecture are required"))
	}
	if s.Version == "" {
		errs = append(errs, errors.New("version is required"))
	}
	for _, p := range s.Component.Ports {
		if _, err := parsePort(p); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func parsePort(p string) (int, error) {
	num, proto, ok := strings.Cut(p, "/")
	n, err := strconv.Atoi(num)
	if !ok || err != nil || n < 1 || n > 65535 || (proto != "tcp" && proto != "udp") {
		return 0, fmt.Errorf("port %q: want NUMBER/tcp or NUMBER/udp", p)
	}
	return n, nil
}

// Build assembles the image: one layer on an empty base, OCI media types.
func Build(s Spec) (v1.Image, error) {
	if err := s.validate(); err != nil {
		return nil, fmt.Errorf("image %s: %w", s.Component.Name, err)
	}
	created := s.Created
	if created.IsZero() {
		created = time.Unix(0, 0)
	}
	created = created.UTC()

	layerTar, err := layerTar(s, created)
	if err != nil {
		return nil, fmt.Errorf("image %s: layer: %w", s.Component.Name, err)
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("image %s: layer: %w", s.Component.Name, err)
	}

	base := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	img, err := mutate.Append(base, mutate.Addendum{
		Layer:     layer,
		MediaType: types.OCILayer,
		History: v1.History{
			Created:   v1.Time{Time: created},
			CreatedBy: "mailfwd pkg/image: " + s.Component.Entrypoint(),
			Comment:   "static Go binary",
		},
	})
	if err != nil {
		return nil, fmt.Errorf("image %s: append layer: %w", s.Component.Name, err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("image %s: config: %w", s.Component.Name, err)
	}
	cf = cf.DeepCopy()
	cf.Created = v1.Time{Time: created}
	cf.OS = s.OS
	cf.Architecture = s.Architecture
	cf.Author = "mailfwd"
	cf.Config = v1.Config{
		Entrypoint: []string{s.Component.Entrypoint()},
		User:       User(),
		WorkingDir: WorkingDir,
		Env: []string{
			"PATH=" + BinDir + ":/usr/bin:/bin",
			"SSL_CERT_FILE=" + CACertsPath,
		},
		Labels: labels(s, created),
	}
	if s.CACerts == nil {
		cf.Config.Env = cf.Config.Env[:1]
	}
	if len(s.Component.Ports) > 0 {
		cf.Config.ExposedPorts = map[string]struct{}{}
		for _, p := range s.Component.Ports {
			cf.Config.ExposedPorts[p] = struct{}{}
		}
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("image %s: set config: %w", s.Component.Name, err)
	}
	return img, nil
}

func labels(s Spec, created time.Time) map[string]string {
	l := map[string]string{
		"org.opencontainers.image.title":       s.Component.Name,
		"org.opencontainers.image.description": s.Component.Description,
		"org.opencontainers.image.version":     s.Version,
		"org.opencontainers.image.created":     created.Format(time.RFC3339),
		"org.opencontainers.image.vendor":      "mailfwd",
		"org.opencontainers.image.base.name":   "scratch",
	}
	if s.Revision != "" {
		l["org.opencontainers.image.revision"] = s.Revision
	}
	if s.Source != "" {
		l["org.opencontainers.image.source"] = s.Source
		l["org.opencontainers.image.url"] = s.Source
	}
	return l
}

// layerTar writes the layer's file system as an uncompressed tar.
func layerTar(s Spec, mtime time.Time) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dir := func(name string, mode int64) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode, ModTime: mtime, Format: tar.FormatPAX})
	}
	file := func(name string, mode int64, data []byte) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data)), ModTime: mtime, Format: tar.FormatPAX}); err != nil {
			return err
		}
		_, err := tw.Write(data)
		return err
	}
	type entry struct {
		name string
		dir  bool
		mode int64
		data []byte
	}
	entries := []entry{
		{name: "usr", dir: true, mode: 0o755},
		{name: "usr/local", dir: true, mode: 0o755},
		{name: "usr/local/bin", dir: true, mode: 0o755},
		{name: strings.TrimPrefix(s.Component.Entrypoint(), "/"), mode: 0o755, data: s.Binary},
		{name: "tmp", dir: true, mode: 0o1777},
	}
	if s.CACerts != nil {
		entries = append(entries,
			entry{name: "etc", dir: true, mode: 0o755},
			entry{name: "etc/ssl", dir: true, mode: 0o755},
			entry{name: "etc/ssl/certs", dir: true, mode: 0o755},
			entry{name: strings.TrimPrefix(CACertsPath, "/"), mode: 0o644, data: s.CACerts},
		)
	}
	// Parents sort before their children.
	sort.Slice(entries, func(i, j int) bool { return entries[i].name < entries[j].name })
	for _, e := range entries {
		var err error
		if e.dir {
			err = dir(e.name, e.mode)
		} else {
			err = file(e.name, e.mode, e.data)
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", e.name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Reference is the image reference registry/name:tag, e.g.
// registry.example.com/mailfwd/mailfwd-ingress:0.1.0.
func Reference(registry string, c Component, tag string) (name.Tag, error) {
	ref := strings.TrimSuffix(registry, "/") + "/" + c.Name + ":" + tag
	t, err := name.NewTag(ref, name.StrictValidation)
	if err != nil {
		return name.Tag{}, fmt.Errorf("image reference %q: %w", ref, err)
	}
	return t, nil
}

// WriteTarball writes img as an image tarball tagged ref.
func WriteTarball(path string, ref name.Tag, img v1.Image) error {
	if err := tarball.WriteToFile(path, ref, img); err != nil {
		return fmt.Errorf("write image %s to %s: %w", ref, path, err)
	}
	return nil
}

// File is one entry of an image's file system.
type File struct {
	Mode     int64 // permission bits (with setuid/setgid/sticky)
	Type     byte  // tar type flag
	Size     int64
	UID, GID int
}

// Contents is what an image tarball holds, read back for checks.
type Contents struct {
	Config v1.ConfigFile
	// Files maps absolute paths to their entries, over all layers.
	Files  map[string]File
	Layers int
}

// ReadTarball reads an image tarball written by WriteTarball (or `docker save`).
func ReadTarball(path string) (*Contents, error) {
	img, err := tarball.ImageFromPath(path, nil)
	if err != nil {
		return nil, fmt.Errorf("read image %s: %w", path, err)
	}
	return Inspect(img)
}

// Inspect reads an image's config and the entries of all its layers.
func Inspect(img v1.Image) (*Contents, error) {
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("image config: %w", err)
	}
	layers, err := img.Layers()
	if err != nil {
		return nil, fmt.Errorf("image layers: %w", err)
	}
	c := &Contents{Config: *cf, Files: map[string]File{}, Layers: len(layers)}
	for i, l := range layers {
		if err := readLayer(l, c.Files); err != nil {
			return nil, fmt.Errorf("layer %d: %w", i, err)
		}
	}
	return c, nil
}

func readLayer(l v1.Layer, files map[string]File) error {
	rc, err := l.Uncompressed()
	if err != nil {
		return err
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	const maxEntries = 10000
	for n := 0; n < maxEntries; n++ {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		p := "/" + strings.TrimSuffix(strings.TrimPrefix(path.Clean("/"+h.Name), "/"), "/")
		files[p] = File{Mode: h.Mode, Type: h.Typeflag, Size: h.Size, UID: h.Uid, GID: h.Gid}
	}
	return fmt.Errorf("more than %d entries", maxEntries)
}

// ReadFile returns the content of the regular file at absolute path p in the
// image (the last layer that has it wins).
func ReadFile(img v1.Image, p string) ([]byte, error) {
	layers, err := img.Layers()
	if err != nil {
		return nil, fmt.Errorf("image layers: %w", err)
	}
	want := strings.TrimPrefix(path.Clean("/"+p), "/")
	var found []byte
	for i, l := range layers {
		data, ok, err := readLayerFile(l, want)
		if err != nil {
			return nil, fmt.Errorf("layer %d: %w", i, err)
		}
		if ok {
			found = data
		}
	}
	if found == nil {
		return nil, fmt.Errorf("%s: not in the image", p)
	}
	return found, nil
}

func readLayerFile(l v1.Layer, want string) ([]byte, bool, error) {
	rc, err := l.Uncompressed()
	if err != nil {
		return nil, false, err
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	const maxEntries = 10000
	for n := 0; n < maxEntries; n++ {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil, false, nil
		}
		if err != nil {
			return nil, false, err
		}
		if strings.TrimPrefix(path.Clean("/"+h.Name), "/") == want && h.Typeflag == tar.TypeReg {
			data, err := io.ReadAll(tr)
			return data, true, err
		}
	}
	return nil, false, fmt.Errorf("more than %d entries", maxEntries)
}
