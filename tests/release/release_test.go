// Package release tests `make release` (scripts/release.sh) for one
// architecture into a temporary directory.
package release

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"debug/elf"
	"encoding/json"
	"io"
	"net"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mailfwd/mailfwd/pkg/image"
	"github.com/mailfwd/mailfwd/pkg/sink"
	"github.com/mailfwd/mailfwd/pkg/testenv"
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
	for _, name := range []string{"bin/mailfwd-ingress", "bin/mailfwd-worker", "bin/mailfwdctl", "bin/mailfwd-sendmail", "README.md", "CHANGELOG.md",
		"deploy/systemd/mailfwd-ingress.service", "deploy/systemd/ingress.conf", "deploy/quickstart/nats.yaml", "docs/one-machine.md"} {
		if _, ok := files[dir+name]; !ok {
			t.Errorf("binaries archive lacks %s", dir+name)
		}
	}
	checkDocsInstallFromArchive(t, files, dir)
	t.Run("one machine from the archive", func(t *testing.T) { oneMachineFromArchive(t, files, dir) })
	checkDocsNameReleaseFiles(t, out, arch)
	sendmail := filepath.Join(t.TempDir(), "mailfwd-sendmail")
	if err := os.WriteFile(sendmail, files[dir+"bin/mailfwd-sendmail"], 0o755); err != nil {
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
	checkChartImagesBuilt(t, out, arch)
	checkDocsCopyFromImages(t, out, arch)

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

// shellBlocks returns the lines of a Markdown file's ```sh blocks.
func shellBlocks(t *testing.T, doc string) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", doc))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	in := false
	for _, l := range strings.Split(string(b), "\n") {
		switch t := strings.TrimSpace(l); {
		case t == "```sh":
			in = true
		case strings.HasPrefix(t, "```"):
			in = false
		case in:
			out = append(out, l)
		}
	}
	return out
}

var archivePath = regexp.MustCompile(`(?:^|[\s=])((?:bin|deploy)/[A-Za-z0-9_.*/-]+)`)

// The docs that install from the binaries archive (releases.md: unpack, cd
// into it, then one-machine.md) name only files it has: every bin/… and
// deploy/… path of their shell blocks matches a file of the archive.
func checkDocsInstallFromArchive(t *testing.T, files map[string][]byte, dir string) {
	t.Helper()
	n := 0
	for _, doc := range []string{"docs/one-machine.md", "docs/releases.md"} {
		for _, l := range shellBlocks(t, doc) {
			for _, m := range archivePath.FindAllStringSubmatch(l, -1) {
				n++
				pat := strings.TrimSuffix(m[1], "/")
				found := false
				for name := range files {
					rel := strings.TrimPrefix(name, dir)
					if ok, _ := path.Match(pat, rel); ok || strings.HasPrefix(rel, pat+"/") {
						found = true
						break
					}
				}
				if !found {
					t.Errorf("%s: `%s` names %s, which the binaries archive does not have", doc, strings.TrimSpace(l), pat)
				}
			}
		}
	}
	if n < 5 {
		t.Errorf("found only %d archive paths in docs/one-machine.md and docs/releases.md", n)
	}
}

var releaseRef = regexp.MustCompile(`dist/release/(0\.2\.0|x\.y\.z|\$V|\$VERSION)/([A-Za-z0-9_.*/$<>{}-]+)`)

// Every release file a doc names (dist/release/0.2.0/mailfwd-chart-0.2.0.tgz,
// …/images/linux-amd64/$img.tar) is one the release built, under this
// release's version and architecture.
func checkDocsNameReleaseFiles(t *testing.T, out, arch string) {
	t.Helper()
	docs, _ := filepath.Glob(filepath.Join("..", "..", "docs", "*.md"))
	docs = append(docs, filepath.Join("..", "..", "README.md"), filepath.Join("..", "..", "charts", "mailfwd", "README.md"), filepath.Join("..", "..", "deploy", "README.md"))
	n := 0
	for _, doc := range docs {
		b, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range releaseRef.FindAllStringSubmatch(string(b), -1) {
			rel := strings.TrimRight(m[2], ".")
			for _, v := range []string{m[1], "0.2.0", "x.y.z", "${V}", "$V", "$VERSION"} {
				rel = strings.ReplaceAll(rel, v, version)
			}
			for _, a := range []string{"<arch>", "$arch", "amd64", "arm64"} {
				rel = strings.ReplaceAll(rel, a, arch)
			}
			rel = strings.ReplaceAll(rel, "$img", "*")
			rel = strings.ReplaceAll(rel, "<binary>", "*")
			if strings.ContainsAny(rel, "$<>{}") {
				continue
			}
			n++
			if matches, _ := filepath.Glob(filepath.Join(out, rel)); len(matches) == 0 {
				t.Errorf("%s names %s, which the release does not have (as %s)", doc, m[0], rel)
			}
		}
	}
	if n < 5 {
		t.Errorf("found only %d release files named in the docs", n)
	}
}

// The packaged chart, installed as docs/releases.md says (image.registry
// where the archives were pushed), runs exactly the images the release
// built: every image: it renders is the reference one of the archives
// carries (the test builds with REGISTRY=registry.example.test/mailfwd).
func checkChartImagesBuilt(t *testing.T, out, arch string) {
	t.Helper()
	helm := os.Getenv("MAILFWD_HELM_BIN")
	if _, err := os.Stat(helm); helm == "" || err != nil {
		if os.Getenv("MAILFWD_REQUIRE_KUBE") != "" {
			t.Fatalf("MAILFWD_HELM_BIN=%q: make tools builds it", helm)
		}
		t.Log("MAILFWD_HELM_BIN not set: the chart's images are not compared with the archives")
		return
	}
	rendered, err := exec.Command(helm, "template", "mailfwd", filepath.Join(out, "mailfwd-chart-"+version+".tgz"), "-n", "mail",
		"--set", "hostname=mail.example.com", "--set", "image.registry=registry.example.test/mailfwd").CombinedOutput()
	if err != nil {
		t.Fatalf("helm template of the release's chart: %v\n%s", err, rendered)
	}
	built := map[string]bool{}
	for _, c := range image.Components() {
		m := untarPlain(t, filepath.Join(out, "images", "linux-"+arch, c.Name+".tar"))["manifest.json"]
		var manifest []struct{ RepoTags []string }
		if err := json.Unmarshal(m, &manifest); err != nil || len(manifest) != 1 {
			t.Fatalf("image %s: manifest.json %s: %v", c.Name, m, err)
		}
		for _, tag := range manifest[0].RepoTags {
			built[tag] = true
		}
	}
	n := 0
	for _, m := range regexp.MustCompile(`(?m)^\s+image: "?([^"\s]+)"?$`).FindAllStringSubmatch(string(rendered), -1) {
		n++
		if !built[m[1]] {
			t.Errorf("the chart runs image %s, which the release did not build (it built %v)", m[1], built)
		}
	}
	if n < 3 {
		t.Errorf("the rendered chart has only %d images", n)
	}
}

var copyFrom = regexp.MustCompile(`COPY --from=\S+/(mailfwd-[a-z]+|mailfwdctl):\S+ (/\S+)`)

// A file the docs copy out of a release image into an application image
// (README: COPY --from=…/mailfwd-sendmail:0.2.0 /usr/local/bin/mailfwd-sendmail …)
// is in that image.
func checkDocsCopyFromImages(t *testing.T, out, arch string) {
	t.Helper()
	docs, _ := filepath.Glob(filepath.Join("..", "..", "docs", "*.md"))
	docs = append(docs, filepath.Join("..", "..", "README.md"), filepath.Join("..", "..", "charts", "mailfwd", "README.md"))
	n := 0
	for _, doc := range docs {
		b, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range copyFrom.FindAllStringSubmatch(string(b), -1) {
			n++
			contents, err := image.ReadTarball(filepath.Join(out, "images", "linux-"+arch, m[1]+".tar"))
			if err != nil {
				t.Errorf("%s: %s: %v", doc, m[0], err)
				continue
			}
			if _, ok := contents.Files[m[2]]; !ok {
				t.Errorf("%s: %s: the image has no %s", doc, m[0], m[2])
			}
		}
	}
	if n == 0 {
		t.Error("found no COPY --from of a release image in the docs")
	}
}

// replaceAll applies old→new pairs to a shipped file, each of which must
// apply (a documented edit that no longer matches the file is a failure).
func replaceAll(t *testing.T, name, text string, pairs ...string) string {
	t.Helper()
	for i := 0; i < len(pairs); i += 2 {
		if !strings.Contains(text, pairs[i]) {
			t.Fatalf("%s no longer has %q", name, pairs[i])
		}
		text = strings.ReplaceAll(text, pairs[i], pairs[i+1])
	}
	return text
}

// The one-machine setup as docs/releases.md and docs/one-machine.md give it,
// from the unpacked binaries archive: the shipped nats-server, ingress and
// worker configurations with the documented edits (host name, a smart host
// route) and, for the test, the paths under a temporary root and free
// loopback ports; each daemon started with its systemd unit's ExecStart; the
// relay entry added with the docs' mailfwdctl command; a message sent with
// the archive's mailfwdctl is delivered to a sink (issue 21: the shipped
// ingress.conf set both policy-dir and relay-networks, which the ingress
// refuses at start).
func oneMachineFromArchive(t *testing.T, files map[string][]byte, top string) {
	natsBin := os.Getenv("MAILFWD_NATS_SERVER_BIN")
	if natsBin == "" {
		t.Skip("MAILFWD_NATS_SERVER_BIN not set (make test sets it)")
	}
	root := t.TempDir()
	for name, b := range files {
		rel, ok := strings.CutPrefix(name, top)
		if !ok {
			continue
		}
		p := filepath.Join(root, "archive", filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	archive := filepath.Join(root, "archive")
	etc, state := filepath.Join(root, "etc", "mailfwd"), filepath.Join(root, "var", "lib", "mailfwd")
	for _, d := range []string{filepath.Join(etc, "policy"), filepath.Join(state, "nats"), filepath.Join(state, "bodies")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	snk := sink.New(sink.Config{})
	sinkAddr := snk.Start(t, "127.0.0.1:0")
	_, sinkPort, _ := net.SplitHostPort(sinkAddr)
	natsAddr, smtpAddr := testenv.FreeAddr(t), testenv.FreeAddr(t)
	paths := []string{"/var/lib/mailfwd", state, "/etc/mailfwd", etc}
	confs := map[string][]string{
		"nats-server.conf": {"127.0.0.1:4222", natsAddr, "127.0.0.1:8222", testenv.FreeAddr(t)},
		"ingress.conf": {"hostname = relay.example.com", "hostname = relay.walk.test", "listen = :25", "listen = " + smtpAddr,
			"127.0.0.1:4222", natsAddr, "127.0.0.1:8080", testenv.FreeAddr(t)},
		"worker.conf": {"helo-name = relay.example.com", "helo-name = relay.walk.test", "# route = .=smtp:[smarthost.example.net]", "route = .=smtp:[127.0.0.1]:" + sinkPort,
			"127.0.0.1:4222", natsAddr, "127.0.0.1:8081", testenv.FreeAddr(t)},
	}
	for name, pairs := range confs {
		b, err := os.ReadFile(filepath.Join(archive, "deploy", "systemd", name))
		if err != nil {
			t.Fatal(err)
		}
		text := replaceAll(t, name, string(b), append(pairs, paths...)...)
		if err := os.WriteFile(filepath.Join(etc, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	logs, exited := map[string]logFile{}, map[string]chan struct{}{}
	for _, unit := range []string{"mailfwd-nats", "mailfwd-ingress", "mailfwd-worker"} {
		b, err := os.ReadFile(filepath.Join(archive, "deploy", "systemd", unit+".service"))
		if err != nil {
			t.Fatal(err)
		}
		m := regexp.MustCompile(`(?m)^ExecStart=(.*)$`).FindSubmatch(b)
		if m == nil {
			t.Fatalf("%s.service has no ExecStart", unit)
		}
		bin := []string{"/usr/local/bin/", archive + "/bin/"}
		if unit == "mailfwd-nats" {
			bin = []string{"/usr/local/bin/nats-server", natsBin}
		}
		args := strings.Fields(replaceAll(t, unit+".service", string(m[1]), append(bin, "/etc/mailfwd", etc)...))
		cmd := exec.Command(args[0], args[1:]...)
		logs[unit] = logFile(filepath.Join(root, unit+".log"))
		f, err := os.Create(string(logs[unit]))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		cmd.Stdout, cmd.Stderr = f, f
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + root}
		if err := cmd.Start(); err != nil {
			t.Fatalf("%s: %v", unit, err)
		}
		done := make(chan struct{}) // closed when the process has ended
		exited[unit] = done
		go func() { _ = cmd.Wait(); close(done) }()
		t.Cleanup(func() {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				_ = cmd.Process.Kill()
				<-done
			}
			if t.Failed() {
				t.Logf("%s:\n%s", unit, logs[unit])
			}
		})
		if unit == "mailfwd-nats" {
			waitDial(t, natsAddr, done, logs[unit])
		}
	}
	waitDial(t, smtpAddr, exited["mailfwd-ingress"], logs["mailfwd-ingress"])
	select {
	case <-exited["mailfwd-worker"]:
		t.Fatalf("mailfwd-worker exited:\n%s", logs["mailfwd-worker"])
	default:
	}

	ctl := func(args ...string) (string, error) {
		cmd := exec.Command(filepath.Join(archive, "bin", "mailfwdctl"), args...)
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + root, "MAILFWD_NATS_URL=nats://" + natsAddr}
		b, err := cmd.CombinedOutput()
		return string(b), err
	}
	// docs/one-machine.md: sudo mailfwdctl policy add access 'Connect:127.0.0.1 RELAY' --policy-dir /etc/mailfwd/policy
	if out, err := ctl("policy", "add", "access", "Connect:127.0.0.1 RELAY", "--policy-dir", filepath.Join(etc, "policy")); err != nil {
		t.Fatalf("policy add: %v\n%s", err, out)
	}
	// The daemons re-read the policy every --policy-interval: send until the relay entry is in force.
	deadline := time.Now().Add(60 * time.Second)
	for {
		out, err := ctl("send", "--server", smtpAddr, "--from", "you@example.com", "--to", "someone@example.net")
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("mailfwdctl send: %v\n%s\ningress:\n%s", err, out, logs["mailfwd-ingress"])
		}
		time.Sleep(time.Second)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := snk.WaitCount(ctx, 1); err != nil {
		t.Fatalf("%v\nworker:\n%s", err, logs["mailfwd-worker"])
	}
	if got := snk.Messages()[0].Recipients; !slices.Equal(got, []string{"someone@example.net"}) {
		t.Errorf("the sink got a message for %v", got)
	}
	if out, err := ctl("queue", "stats", "--nats-store-dir", filepath.Join(state, "nats")); err != nil {
		t.Errorf("mailfwdctl queue stats: %v\n%s", err, out)
	}
}

// waitDial waits until addr accepts connections, or the process ends.
func waitDial(t *testing.T, addr string, exited <-chan struct{}, log logFile) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		select {
		case <-exited:
			t.Fatalf("exited before listening on %s:\n%s", addr, log)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("nothing listens on %s: %v\n%s", addr, err, log)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// logFile is a daemon's output file; String reads what it has written.
type logFile string

func (f logFile) String() string {
	b, _ := os.ReadFile(string(f))
	return string(b)
}
