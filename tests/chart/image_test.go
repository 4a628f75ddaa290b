package chart_test

import (
	"context"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	corev1 "k8s.io/api/core/v1"

	"github.com/mailfwd/mailfwd/pkg/image"
)

// builtImage is one image built the way `make image` builds it, written to a
// tarball and read back.
type builtImage struct {
	comp     image.Component
	ref      name.Tag
	contents *image.Contents
	binary   string // the entrypoint extracted from the tarball
}

var (
	imagesOnce sync.Once
	imagesDir  string
	images     map[string]builtImage
	imagesErr  error
)

// buildImages builds the three images once per test binary (go build is
// cached, so this is seconds after the first run).
func buildImages(t *testing.T) map[string]builtImage {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the ingress, worker and mailfwdctl binaries; skipped with -short")
	}
	imagesOnce.Do(func() {
		imagesDir, imagesErr = os.MkdirTemp("", "mailfwd-chart-images-")
		if imagesErr != nil {
			return
		}
		images, imagesErr = buildImagesInto(repoRoot(t), imagesDir)
	})
	if imagesErr != nil {
		t.Fatal(imagesErr)
	}
	return images
}

func TestMain(m *testing.M) {
	code := m.Run()
	if imagesDir != "" {
		os.RemoveAll(imagesDir)
	}
	os.Exit(code)
}

func buildImagesInto(root, dir string) (map[string]builtImage, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	tag, err := chartAppVersion(root)
	if err != nil {
		return nil, err
	}
	gb := image.GoBuild{Dir: root, OS: "linux", Arch: runtime.GOARCH}
	out := map[string]builtImage{}
	for _, c := range image.Components() {
		bin, err := gb.Build(ctx, c, filepath.Join(dir, c.Name+".bin"))
		if err != nil {
			return nil, err
		}
		img, err := image.Build(image.Spec{Component: c, Binary: bin, CACerts: []byte("# test bundle\n"), OS: "linux", Architecture: runtime.GOARCH, Version: tag})
		if err != nil {
			return nil, err
		}
		ref, err := image.Reference(testRegistry, c, tag)
		if err != nil {
			return nil, err
		}
		tarPath := filepath.Join(dir, c.Name+".tar")
		if err := image.WriteTarball(tarPath, ref, img); err != nil {
			return nil, err
		}
		contents, err := image.ReadTarball(tarPath)
		if err != nil {
			return nil, err
		}
		// Extract the entrypoint from what was written, not from the build output.
		back, err := readBack(tarPath, c.Entrypoint())
		if err != nil {
			return nil, err
		}
		exe := filepath.Join(dir, c.Name+".extracted")
		if err := os.WriteFile(exe, back, 0o755); err != nil {
			return nil, err
		}
		out[c.Name] = builtImage{comp: c, ref: ref, contents: contents, binary: exe}
	}
	return out, nil
}

func chartAppVersion(root string) (string, error) {
	b, err := os.ReadFile(filepath.Join(root, "charts", "mailfwd", "Chart.yaml"))
	if err != nil {
		return "", err
	}
	m := regexp.MustCompile(`(?m)^appVersion:\s*"?([^"\s]+)"?`).FindSubmatch(b)
	if m == nil {
		return "", fmt.Errorf("Chart.yaml has no appVersion")
	}
	return string(m[1]), nil
}

// TestImages checks the images themselves: entrypoint, user, the static
// binary's path and mode, the labels.
func TestImages(t *testing.T) {
	imgs := buildImages(t)
	for _, c := range image.Components() {
		t.Run(c.Name, func(t *testing.T) {
			b := imgs[c.Name]
			cfg := b.contents.Config.Config
			if got := strings.Join(cfg.Entrypoint, " "); got != "/usr/local/bin/"+c.Name {
				t.Errorf("Entrypoint = %q, want /usr/local/bin/%s", got, c.Name)
			}
			if cfg.User != "65532:65532" {
				t.Errorf("User = %q, want 65532:65532", cfg.User)
			}
			if b.contents.Layers != 1 {
				t.Errorf("%d layers, want 1 (the binary on an empty base)", b.contents.Layers)
			}
			f, ok := b.contents.Files["/usr/local/bin/"+c.Name]
			if !ok || f.Mode != 0o755 || f.UID != 0 {
				t.Errorf("binary entry = %+v (present %v), want mode 0755 owned by root (not writable by the user)", f, ok)
			}
			if cfg.Labels["org.opencontainers.image.title"] != c.Name || cfg.Labels["org.opencontainers.image.version"] == "" {
				t.Errorf("labels = %v", cfg.Labels)
			}
			// Static: an ELF executable without an interpreter (runs on an empty base).
			ef, err := elf.Open(b.binary)
			if err != nil {
				t.Fatalf("binary is not ELF: %v", err)
			}
			defer ef.Close()
			for _, p := range ef.Progs {
				if p.Type == elf.PT_INTERP {
					t.Error("binary has a dynamic loader (PT_INTERP); want CGO_ENABLED=0")
				}
			}
			if ef.Type != elf.ET_EXEC && ef.Type != elf.ET_DYN {
				t.Errorf("ELF type %v", ef.Type)
			}
		})
	}
}

// TestChartMatchesImages: every container the chart renders uses one of the
// images with its entrypoint (no command override), flags the binary knows,
// the image's user and only ports the image exposes.
func TestChartMatchesImages(t *testing.T) {
	helm := helmBin(t)
	imgs := buildImages(t)
	for _, r := range renderings(t) {
		t.Run(r.name, func(t *testing.T) {
			out, err := template(t, helm, r.args...)
			if err != nil {
				t.Fatal(err)
			}
			seen := map[string]bool{}
			for podName, ps := range podSpecs(t, parseManifests(t, out)) {
				for _, c := range ps.Containers {
					where := podName + " container " + c.Name
					ref, err := name.NewTag(c.Image, name.StrictValidation)
					if err != nil {
						t.Errorf("%s: image %q: %v", where, c.Image, err)
						continue
					}
					repo := ref.Context().Name()
					var b builtImage
					for _, bi := range imgs {
						if bi.ref.Context().Name() == repo {
							b = bi
						}
					}
					if b.binary == "" {
						t.Errorf("%s: image %s is none of the built images", where, c.Image)
						continue
					}
					seen[b.comp.Name] = true
					if ref.TagStr() != b.ref.TagStr() {
						t.Errorf("%s: tag %s, `make image` tags %s (the chart's appVersion)", where, ref.TagStr(), b.ref.TagStr())
					}
					if len(c.Command) > 0 {
						t.Errorf("%s: command %q overrides the entrypoint %s", where, c.Command, b.comp.Entrypoint())
					}
					checkFlagsKnown(t, where, b, c.Args)
					checkUser(t, where, b, ps, c)
					exposed := b.contents.Config.Config.ExposedPorts
					for _, p := range c.Ports {
						if _, ok := exposed[fmt.Sprintf("%d/%s", p.ContainerPort, strings.ToLower(string(p.Protocol)))]; !ok {
							t.Errorf("%s: port %d not exposed by image %s (%v)", where, p.ContainerPort, b.comp.Name, exposed)
						}
					}
				}
			}
			for _, want := range []string{"mailfwd-ingress", "mailfwd-worker"} {
				if !seen[want] {
					t.Errorf("no container uses %s", want)
				}
			}
		})
	}
}

func checkUser(t *testing.T, where string, b builtImage, ps corev1.PodSpec, c corev1.Container) {
	t.Helper()
	uid, gid := int64(-1), int64(-1)
	if ps.SecurityContext != nil {
		if ps.SecurityContext.RunAsUser != nil {
			uid = *ps.SecurityContext.RunAsUser
		}
		if ps.SecurityContext.RunAsGroup != nil {
			gid = *ps.SecurityContext.RunAsGroup
		}
	}
	if c.SecurityContext != nil {
		if c.SecurityContext.RunAsUser != nil {
			uid = *c.SecurityContext.RunAsUser
		}
		if c.SecurityContext.RunAsGroup != nil {
			gid = *c.SecurityContext.RunAsGroup
		}
	}
	if got := fmt.Sprintf("%d:%d", uid, gid); got != b.contents.Config.Config.User {
		t.Errorf("%s: runs as %s, image %s is built for %s", where, got, b.comp.Name, b.contents.Config.Config.User)
	}
}

var helpCache sync.Map // binary+subcommand → help text

// checkFlagsKnown runs the image's own binary with --help (the subcommand
// first for mailfwdctl) and checks that every flag the chart passes is listed.
func checkFlagsKnown(t *testing.T, where string, b builtImage, args []string) {
	t.Helper()
	var sub []string
	flags := args
	for len(flags) > 0 && !strings.HasPrefix(flags[0], "-") {
		sub = append(sub, flags[0])
		flags = flags[1:]
	}
	key := b.binary + " " + strings.Join(sub, " ")
	help, ok := helpCache.Load(key)
	if !ok {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, b.binary, append(sub, "--help")...)
		cmd.Env = []string{"HOME=" + t.TempDir(), "PATH=/usr/bin:/bin"}
		out, _ := cmd.CombinedOutput() // -h may exit non-zero; the text is what matters
		help = string(out)
		helpCache.Store(key, help)
	}
	text := help.(string)
	if !strings.Contains(text, "-") || len(text) < 50 {
		t.Fatalf("%s: %s %v --help printed no usage:\n%s", where, b.comp.Name, sub, text)
	}
	for _, a := range flags {
		if !strings.HasPrefix(a, "-") {
			t.Errorf("%s: argument %q is not a flag", where, a)
			continue
		}
		fl, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		re := regexp.MustCompile(`(?m)(^|\s)--?` + regexp.QuoteMeta(fl) + `(\s|$)`)
		if !re.MatchString(text) {
			t.Errorf("%s: flag --%s is unknown to %s %v", where, fl, b.comp.Entrypoint(), sub)
		}
	}
}

func readBack(tarPath, p string) ([]byte, error) {
	img, err := tarball.ImageFromPath(tarPath, nil)
	if err != nil {
		return nil, err
	}
	return image.ReadFile(img, p)
}
