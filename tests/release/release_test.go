// Package release tests `make release` (scripts/release.sh) for one
// architecture into a temporary directory.
package release

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"debug/elf"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/mailfwd/mailfwd/pkg/image"
)

const version = "0.0.0-test.1"

// untar returns a .tar.gz's regular files by name.
func untar(t *testing.T, path string) map[string][]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	gz, err := gzip.NewReader(f)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	tr := tar.NewReader(gz)
	out := map[string][]byte{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if h.Typeflag == tar.TypeReg {
			b, err := io.ReadAll(io.LimitReader(tr, 200<<20))
			if err != nil {
				t.Fatal(err)
			}
			out[h.Name] = b
		}
	}
}

// A release for this machine's architecture: the binaries run and report the
// version, the image archives carry it as their tag, the chart's version
// and appVersion match, every SBOM is CycloneDX naming its binary's
// modules, and SHA256SUMS checks every file (issue 21: nothing to install,
// the version was a git hash).
func TestRelease(t *testing.T) {
	cdx := os.Getenv("MAILFWD_CYCLONEDX_BIN")
	if _, err := os.Stat(cdx); cdx == "" || err != nil {
		if os.Getenv("CI") != "" || os.Getenv("MAILFWD_REQUIRE_CYCLONEDX") != "" {
			t.Fatalf("MAILFWD_CYCLONEDX_BIN=%q: build it with make tools", cdx)
		}
		t.Skip("MAILFWD_CYCLONEDX_BIN not set (make test builds cyclonedx-gomod and sets it)")
	}
	out := t.TempDir()
	arch := runtime.GOARCH
	cmd := exec.Command("bash", "scripts/release.sh")
	cmd.Dir = filepath.Join("..", "..")
	cmd.Env = append(os.Environ(), "VERSION="+version, "OUT="+out, "ARCHES="+arch, "CYCLONEDX="+cdx, "REGISTRY=registry.example.test/mailfwd")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("scripts/release.sh: %v\n%s", err, b)
	}

	// The binaries archive.
	files := untar(t, filepath.Join(out, "mailfwd-"+version+"-linux-"+arch+".tar.gz"))
	dir := "mailfwd-" + version + "-linux-" + arch + "/"
	for _, name := range []string{"mailfwd-ingress", "mailfwd-worker", "mailfwdctl", "mailfwd-sendmail", "README.md", "CHANGELOG.md", "systemd/mailfwd-ingress.service", "systemd/ingress.conf"} {
		if _, ok := files[dir+name]; !ok {
			t.Errorf("binaries archive lacks %s", dir+name)
		}
	}
	sendmail := filepath.Join(t.TempDir(), "mailfwd-sendmail")
	if err := os.WriteFile(sendmail, files[dir+"mailfwd-sendmail"], 0o755); err != nil {
		t.Fatal(err)
	}
	v := exec.Command(sendmail, "-C", "/dev/null", "-d0", "-bt")
	v.Stdin = strings.NewReader("")
	if b, err := v.CombinedOutput(); err != nil || !strings.Contains(string(b), "Version "+version) {
		t.Errorf("released mailfwd-sendmail -d0 -bt: %v\n%s", err, b)
	}
	// Trimmed (no build directory in the binary) and stripped (no symbol table, no DWARF).
	if bi, err := exec.Command("go", "version", "-m", sendmail).Output(); err != nil || !strings.Contains(string(bi), "-trimpath=true") {
		t.Errorf("go version -m of the released binary does not show -trimpath (%v):\n%s", err, bi)
	}
	if f, err := elf.Open(sendmail); err != nil {
		t.Error(err)
	} else {
		if f.Section(".symtab") != nil || f.Section(".debug_info") != nil {
			t.Errorf("released mailfwd-sendmail is not stripped (has .symtab or .debug_info)")
		}
		f.Close()
	}

	// The image archives.
	for _, c := range image.Components() {
		p := filepath.Join(out, "images", "linux-"+arch, c.Name+".tar")
		contents, err := image.ReadTarball(p)
		if err != nil {
			t.Errorf("image %s: %v", c.Name, err)
			continue
		}
		if contents.Config.Architecture != arch || contents.Config.Config.Labels["org.opencontainers.image.version"] != version {
			t.Errorf("image %s: arch %s, version label %q", c.Name, contents.Config.Architecture, contents.Config.Config.Labels["org.opencontainers.image.version"])
		}
		manifest := untarPlain(t, p)["manifest.json"]
		if !bytes.Contains(manifest, []byte("registry.example.test/mailfwd/"+c.Name+":"+version)) {
			t.Errorf("image %s: manifest.json does not tag it %s:%s: %s", c.Name, c.Name, version, manifest)
		}
	}

	// The chart.
	chart := untar(t, filepath.Join(out, "mailfwd-chart-"+version+".tgz"))
	cy := string(chart["mailfwd/Chart.yaml"])
	if !strings.Contains(cy, "\nversion: "+version+"\n") || !strings.Contains(cy, "\nappVersion: \""+version+"\"\n") {
		t.Errorf("packaged Chart.yaml:\n%s", cy)
	}
	if _, ok := chart["mailfwd/values.schema.json"]; !ok {
		t.Errorf("packaged chart lacks values.schema.json")
	}

	// The SBOMs.
	for _, bin := range []string{"mailfwd-ingress", "mailfwd-worker", "mailfwdctl", "mailfwd-sendmail"} {
		b, err := os.ReadFile(filepath.Join(out, "sbom", "mailfwd-"+version+"-linux-"+arch+"."+bin+".cdx.json"))
		if err != nil {
			t.Error(err)
			continue
		}
		var bom struct {
			BOMFormat  string `json:"bomFormat"`
			Components []struct {
				Name, Version, Purl string
			} `json:"components"`
		}
		if err := json.Unmarshal(b, &bom); err != nil || bom.BOMFormat != "CycloneDX" || len(bom.Components) == 0 {
			t.Errorf("SBOM of %s: %v, format %q, %d components", bin, err, bom.BOMFormat, len(bom.Components))
		}
		if bin == "mailfwd-sendmail" && (!bytes.Contains(b, []byte("go-smtp")) || bytes.Contains(b, []byte("k8s.io"))) {
			t.Errorf("SBOM of mailfwd-sendmail does not list go-smtp, or lists Kubernetes modules")
		}
	}

	// SHA256SUMS covers every file and checks.
	sums, err := os.ReadFile(filepath.Join(out, "SHA256SUMS"))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	_ = filepath.Walk(out, func(p string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() && info.Name() != "SHA256SUMS" {
			n++
			rel, _ := filepath.Rel(out, p)
			if !bytes.Contains(sums, []byte("  "+rel+"\n")) {
				t.Errorf("SHA256SUMS lacks %s", rel)
			}
		}
		return nil
	})
	check := exec.Command("sha256sum", "--check", "--strict", "SHA256SUMS")
	check.Dir = out
	if b, err := check.CombinedOutput(); err != nil || strings.Count(string(b), ": OK") != n {
		t.Errorf("sha256sum --check: %v\n%s", err, b)
	}
}

// untarPlain reads an uncompressed tar's files (the image archives).
func untarPlain(t *testing.T, path string) map[string][]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	out := map[string][]byte{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Name == "manifest.json" {
			b, _ := io.ReadAll(io.LimitReader(tr, 1<<20))
			out[h.Name] = b
		}
	}
}
