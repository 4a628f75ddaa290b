package image

import (
	"archive/tar"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestBuildWriteRead(t *testing.T) {
	ca := []byte("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
	for _, c := range Components() {
		t.Run(c.Name, func(t *testing.T) {
			bin := []byte("\x7fELF fake binary of " + c.Name)
			img, err := Build(Spec{Component: c, Binary: bin, CACerts: ca, OS: "linux", Architecture: "arm64",
				Version: "1.2.3", Revision: "abc123", Source: "https://example.com/mailfwd", Created: time.Unix(1700000000, 0)})
			if err != nil {
				t.Fatalf("Build: %v", err)
			}
			ref, err := Reference("registry.example.com/team/", c, "1.2.3")
			if err != nil {
				t.Fatalf("Reference: %v", err)
			}
			if got, want := ref.String(), "registry.example.com/team/"+c.Name+":1.2.3"; got != want {
				t.Errorf("reference = %s, want %s", got, want)
			}
			path := filepath.Join(t.TempDir(), c.Name+".tar")
			if err := WriteTarball(path, ref, img); err != nil {
				t.Fatalf("WriteTarball: %v", err)
			}
			got, err := ReadTarball(path)
			if err != nil {
				t.Fatalf("ReadTarball: %v", err)
			}
			cfg := got.Config.Config
			if len(cfg.Entrypoint) != 1 || cfg.Entrypoint[0] != "/usr/local/bin/"+c.Name {
				t.Errorf("Entrypoint = %q, want [/usr/local/bin/%s]", cfg.Entrypoint, c.Name)
			}
			if len(cfg.Cmd) != 0 {
				t.Errorf("Cmd = %q, want none (the chart passes flags as args)", cfg.Cmd)
			}
			if cfg.User != "65532:65532" || cfg.WorkingDir != "/" {
				t.Errorf("User, WorkingDir = %q, %q; want 65532:65532, /", cfg.User, cfg.WorkingDir)
			}
			if got.Config.OS != "linux" || got.Config.Architecture != "arm64" {
				t.Errorf("platform = %s/%s, want linux/arm64", got.Config.OS, got.Config.Architecture)
			}
			for k, want := range map[string]string{
				"org.opencontainers.image.title":    c.Name,
				"org.opencontainers.image.version":  "1.2.3",
				"org.opencontainers.image.revision": "abc123",
				"org.opencontainers.image.source":   "https://example.com/mailfwd",
				"org.opencontainers.image.created":  "2023-11-14T22:13:20Z",
			} {
				if cfg.Labels[k] != want {
					t.Errorf("label %s = %q, want %q", k, cfg.Labels[k], want)
				}
			}
			if len(cfg.ExposedPorts) != len(c.Ports) {
				t.Errorf("ExposedPorts = %v, want %v", cfg.ExposedPorts, c.Ports)
			}
			for _, p := range c.Ports {
				if _, ok := cfg.ExposedPorts[p]; !ok {
					t.Errorf("port %s not exposed (have %v)", p, cfg.ExposedPorts)
				}
			}
			if got.Layers != 1 {
				t.Errorf("layers = %d, want 1", got.Layers)
			}
			want := map[string]File{
				"/usr/local/bin/" + c.Name:           {Mode: 0o755, Type: tar.TypeReg, Size: int64(len(bin))},
				"/etc/ssl/certs/ca-certificates.crt": {Mode: 0o644, Type: tar.TypeReg, Size: int64(len(ca))},
				"/tmp":                               {Mode: 0o1777, Type: tar.TypeDir},
				"/usr/local/bin":                     {Mode: 0o755, Type: tar.TypeDir},
			}
			for p, w := range want {
				f, ok := got.Files[p]
				if !ok {
					t.Errorf("%s missing from the layer; have %v", p, keys(got.Files))
					continue
				}
				if f != w {
					t.Errorf("%s = %+v, want %+v", p, f, w)
				}
			}
			for p := range got.Files {
				if strings.HasPrefix(p, "/etc/passwd") {
					t.Errorf("image has %s; the user is numeric", p)
				}
			}
		})
	}
}

func TestBuildIsReproducible(t *testing.T) {
	c := Components()[0]
	spec := Spec{Component: c, Binary: []byte("bin"), OS: "linux", Architecture: "amd64", Version: "v1"}
	a, err := Build(spec)
	if err != nil {
		t.Fatal(err)
	}
	b, err := Build(spec)
	if err != nil {
		t.Fatal(err)
	}
	da, err := a.Digest()
	if err != nil {
		t.Fatal(err)
	}
	db, err := b.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if da != db {
		t.Errorf("same inputs gave digests %s and %s", da, db)
	}
	got, err := Inspect(a)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := got.Files["/etc/ssl/certs/ca-certificates.crt"]; ok {
		t.Error("CA bundle present although Spec.CACerts is nil")
	}
	if got.Config.Created.Unix() != 0 {
		t.Errorf("Created = %v, want the Unix epoch for a zero Spec.Created", got.Config.Created)
	}
}

func TestBuildRejectsBadSpecs(t *testing.T) {
	good := Spec{Component: Components()[1], Binary: []byte("x"), OS: "linux", Architecture: "amd64", Version: "v1"}
	tests := []struct {
		name   string
		mutate func(*Spec)
		want   string
	}{
		{"empty binary", func(s *Spec) { s.Binary = nil }, "binary is empty"},
		{"no platform", func(s *Spec) { s.Architecture = "" }, "OS and Architecture"},
		{"no version", func(s *Spec) { s.Version = "" }, "version is required"},
		{"bad port", func(s *Spec) { s.Component.Ports = []string{"25"} }, `port "25"`},
		{"name with slash", func(s *Spec) { s.Component.Name = "a/b" }, "not a plain image name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := good
			tt.mutate(&s)
			_, err := Build(s)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Build error = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func keys(m map[string]File) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func TestReadFile(t *testing.T) {
	c := Components()[2]
	img, err := Build(Spec{Component: c, Binary: []byte("the binary"), OS: "linux", Architecture: "amd64", Version: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	got, err := ReadFile(img, c.Entrypoint())
	if err != nil || string(got) != "the binary" {
		t.Errorf("ReadFile(%s) = %q, %v; want the binary", c.Entrypoint(), got, err)
	}
	if _, err := ReadFile(img, "/bin/sh"); err == nil {
		t.Error("ReadFile(/bin/sh) succeeded on a scratch image")
	}
}
