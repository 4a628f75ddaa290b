package ctl_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"

	"github.com/mailfwd/mailfwd/pkg/ctl"
	"github.com/mailfwd/mailfwd/pkg/policy"
	"github.com/mailfwd/mailfwd/pkg/testenv"
)

// fixtureDir is a sendmail /etc/mail of the MMS (MM4) gateway: the access map
// exactly as in the gateway notes, a mailertable to the other operators'
// MM4 gateways, aliases with a continuation line, a virtusertable and
// local-host-names.
const fixtureDir = "testdata/mms-gateway"

// fixtureKeys are the files in fixtureDir.
var fixtureKeys = []string{"access", "aliases", "local-host-names", "mailertable", "virtusertable"}

// ctlResult is one in-process mailfwdctl run.
type ctlResult struct {
	code        int
	out, errOut string
}

func (r ctlResult) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.out, r.errOut)
}

// runCtl runs mailfwdctl in-process with a bounded context.
func runCtl(t *testing.T, args ...string) ctlResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var out, errOut bytes.Buffer
	code := ctl.Execute(ctx, args, &out, &errOut)
	return ctlResult{code: code, out: out.String(), errOut: errOut.String()}
}

// mustCtl runs mailfwdctl and fails the test unless it exits with want.
func mustCtl(t *testing.T, want int, args ...string) ctlResult {
	t.Helper()
	r := runCtl(t, args...)
	if r.code != want {
		t.Fatalf("mailfwdctl %s: want exit %d, got %s", strings.Join(args, " "), want, r)
	}
	return r
}

// readFixture reads the fixture directory's files.
func readFixture(t *testing.T) map[string]string {
	t.Helper()
	return readFiles(t, fixtureDir)
}

// readFiles reads every regular file of dir (no subdirectories).
func readFiles(t *testing.T, dir string) map[string]string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{}
	for _, e := range ents {
		if e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		files[e.Name()] = string(b)
	}
	return files
}

func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for k, v := range files {
		if err := os.WriteFile(filepath.Join(dir, k), []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// assertFiles fails unless got and want hold the same keys with
// byte-identical values.
func assertFiles(t *testing.T, what string, got, want map[string]string) {
	t.Helper()
	if g, w := slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(want)); !slices.Equal(g, w) {
		t.Fatalf("%s: keys %q, want %q", what, g, w)
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%s: %s differs:\n got %q\nwant %q", what, k, got[k], w)
		}
	}
}

func mustContain(t *testing.T, what, s string, subs ...string) {
	t.Helper()
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			t.Errorf("%s does not contain %q:\n%s", what, sub, s)
		}
	}
}

// kubeFixture is one API server shared by the subtests of a test; every
// subtest uses its own ConfigMap so they do not depend on each other.
type kubeFixture struct {
	kube *testenv.Kube
	cs   kubernetes.Interface
}

const testNamespace = "mail"

// args returns the policy command with the connection flags for ConfigMap
// name in namespace mail.
func (f *kubeFixture) args(name string, args ...string) []string {
	return append(append([]string{"policy"}, args...),
		"--kubeconfig", f.kube.Kubeconfig, "-n", testNamespace, "--configmap", name)
}

func (f *kubeFixture) configMap(t *testing.T, ns, name string) *corev1.ConfigMap {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cm, err := f.cs.CoreV1().ConfigMaps(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get ConfigMap %s/%s: %v", ns, name, err)
	}
	return cm
}

// seed imports the fixture into ConfigMap name and returns it.
func (f *kubeFixture) seed(t *testing.T, name string) *corev1.ConfigMap {
	t.Helper()
	mustCtl(t, 0, f.args(name, "import", fixtureDir)...)
	cm := f.configMap(t, testNamespace, name)
	assertFiles(t, "seeded ConfigMap", cm.Data, readFixture(t))
	return cm
}

// assertUnchanged fails unless ConfigMap name still has before's
// resourceVersion and data.
func (f *kubeFixture) assertUnchanged(t *testing.T, name string, before *corev1.ConfigMap) {
	t.Helper()
	cm := f.configMap(t, testNamespace, name)
	if cm.ResourceVersion != before.ResourceVersion {
		t.Errorf("ConfigMap %s was written: resourceVersion %s → %s", name, before.ResourceVersion, cm.ResourceVersion)
	}
	assertFiles(t, "ConfigMap "+name+" after a change that must not be written", cm.Data, before.Data)
}

// TestPolicyConfigMap runs the policy commands against a real kube-apiserver.
func TestPolicyConfigMap(t *testing.T) {
	k, cs := kubeWithNamespace(t, testNamespace)
	f := &kubeFixture{kube: k, cs: cs}
	fixture := readFixture(t)

	t.Run("import", func(t *testing.T) {
		// The default ConfigMap name, mailfwd-policy.
		args := []string{"policy", "import", fixtureDir, "--kubeconfig", k.Kubeconfig, "-n", testNamespace}
		r := mustCtl(t, 0, args...)
		mustContain(t, "import stderr", r.errOut, "importing", filepath.Join(fixtureDir, "access"), filepath.Join(fixtureDir, "aliases"))
		mustContain(t, "import stdout", r.out, "+++ access (new)", "+To:mms.mnc002.mccXXX.gprs                       REJECT",
			"+mms.mnc002.mcc238.gprs          smtp:[10.1.1.1]:[10.1.1.2]", "ConfigMap mail/mailfwd-policy: written")
		// The audit line names the Kubernetes user the API server saw (SelfSubjectReview).
		// testenv's kube-apiserver knows the test's token as user mailfwd-admin.
		mustContain(t, "import audit", r.errOut, "audit: action=policy.import actor=mailfwd-admin ", `target="ConfigMap mail/mailfwd-policy keys=`)

		cm := f.configMap(t, testNamespace, "mailfwd-policy")
		assertFiles(t, "client-go ConfigMap data", cm.Data, fixture)
		if len(cm.BinaryData) != 0 {
			t.Errorf("BinaryData = %v, want none", cm.BinaryData)
		}

		out, err := k.Kubectl(t, "get", "configmap", "mailfwd-policy", "-n", testNamespace, "-o", "json")
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		var viaKubectl corev1.ConfigMap
		if err := json.Unmarshal([]byte(out), &viaKubectl); err != nil {
			t.Fatalf("kubectl output: %v\n%s", err, out)
		}
		assertFiles(t, "kubectl ConfigMap data", viaKubectl.Data, fixture)
		out, err = k.Kubectl(t, "get", "configmap", "-n", testNamespace, "--no-headers")
		if err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
		if !slices.ContainsFunc(strings.Split(out, "\n"), func(l string) bool {
			f := strings.Fields(l)
			return len(f) >= 2 && f[0] == "mailfwd-policy" && f[1] == strconv.Itoa(len(fixture))
		}) {
			t.Errorf("kubectl get configmap does not list mailfwd-policy with %d keys:\n%s", len(fixture), out)
		}

		// Importing the same directory again changes nothing.
		r = mustCtl(t, 0, args...)
		mustContain(t, "re-import stdout", r.out, "no change")
		if got := f.configMap(t, testNamespace, "mailfwd-policy"); got.ResourceVersion != cm.ResourceVersion {
			t.Errorf("re-import wrote: resourceVersion %s → %s", cm.ResourceVersion, got.ResourceVersion)
		}
	})

	t.Run("get", func(t *testing.T) {
		const name = "get"
		f.seed(t, name)

		var asJSON map[string]string
		r := mustCtl(t, 0, f.args(name, "get", "-o", "json")...)
		if err := json.Unmarshal([]byte(r.out), &asJSON); err != nil {
			t.Fatalf("get -o json: %v\n%s", err, r.out)
		}
		assertFiles(t, "get -o json", asJSON, fixture)

		var asYAML map[string]string
		r = mustCtl(t, 0, f.args(name, "get", "-o", "yaml")...)
		if err := yaml.Unmarshal([]byte(r.out), &asYAML); err != nil {
			t.Fatalf("get -o yaml: %v\n%s", err, r.out)
		}
		assertFiles(t, "get -o yaml", asYAML, fixture)

		r = mustCtl(t, 0, f.args(name, "get", "-o", "table")...)
		rows := map[string][]string{}
		for _, l := range strings.Split(strings.TrimSpace(r.out), "\n") {
			if fs := strings.Fields(l); len(fs) > 0 && fs[0] != "#" {
				rows[fs[0]] = fs[1:]
			}
		}
		mustContain(t, "get -o table", r.out, "# ConfigMap mail/get")
		want := map[string][]string{
			"KEY":              {"ENTRIES", "BYTES"},
			"access":           {"13", strconv.Itoa(len(fixture["access"]))},
			"mailertable":      {"4", strconv.Itoa(len(fixture["mailertable"]))},
			"aliases":          {"3", strconv.Itoa(len(fixture["aliases"]))},
			"virtusertable":    {"1", strconv.Itoa(len(fixture["virtusertable"]))},
			"local-host-names": {"3", strconv.Itoa(len(fixture["local-host-names"]))},
			"settings":         {"0", "0"},
		}
		for k, w := range want {
			if !slices.Equal(rows[k], w) {
				t.Errorf("get -o table: row %s = %q, want %q\n%s", k, rows[k], w, r.out)
			}
		}

		// One key: the sendmail text itself, or that key alone as JSON.
		r = mustCtl(t, 0, f.args(name, "get", "access")...)
		if r.out != fixture["access"] {
			t.Errorf("get access:\n got %q\nwant %q", r.out, fixture["access"])
		}
		asJSON = nil
		r = mustCtl(t, 0, f.args(name, "get", "virtusertable", "-o", "json")...)
		if err := json.Unmarshal([]byte(r.out), &asJSON); err != nil {
			t.Fatalf("get virtusertable -o json: %v\n%s", err, r.out)
		}
		assertFiles(t, "get virtusertable -o json", asJSON, map[string]string{"virtusertable": "@example.org    %1@example.net\n"})

		mustCtl(t, ctl.ExitUsage, f.args(name, "get", "passwd")...)
		mustCtl(t, ctl.ExitUsage, f.args(name, "get", "-o", "xml")...)
	})

	t.Run("add and delete", func(t *testing.T) {
		const name = "adddel"
		before := f.seed(t, name)

		r := mustCtl(t, 0, f.args(name, "add", "access", "To:new.example RELAY")...)
		mustContain(t, "add stdout", r.out, "--- access (current)", "+++ access (new)", "+To:new.example RELAY", "ConfigMap mail/adddel: written")
		cm := f.configMap(t, testNamespace, name)
		if cm.ResourceVersion == before.ResourceVersion {
			t.Errorf("add did not write the ConfigMap")
		}
		if want := fixture["access"] + "To:new.example RELAY\n"; cm.Data["access"] != want {
			t.Errorf("access after add:\n got %q\nwant %q", cm.Data["access"], want)
		}
		for _, k := range fixtureKeys[1:] {
			if cm.Data[k] != fixture[k] {
				t.Errorf("add access changed %s: %q", k, cm.Data[k])
			}
		}

		// The same left-hand side again (any case) replaces the entry.
		r = mustCtl(t, 0, f.args(name, "add", "access", "to:NEW.example REJECT")...)
		mustContain(t, "replace stdout", r.out, "-To:new.example RELAY", "+to:NEW.example REJECT")
		cm = f.configMap(t, testNamespace, name)
		if want := fixture["access"] + "to:NEW.example REJECT\n"; cm.Data["access"] != want {
			t.Errorf("access after replacing add:\n got %q\nwant %q", cm.Data["access"], want)
		}

		// The operator who was down is back: replace the fixture's own entry.
		mustCtl(t, 0, f.args(name, "add", "access", "To:mms.mnc002.mccXXX.gprs RELAY")...)
		cm = f.configMap(t, testNamespace, name)
		if strings.Contains(cm.Data["access"], "REJECT\n#\n# The same") || strings.Count(cm.Data["access"], "To:mms.mnc002.mccXXX.gprs") != 1 ||
			!strings.HasSuffix(cm.Data["access"], "To:mms.mnc002.mccXXX.gprs RELAY\n") {
			t.Errorf("access after replacing a fixture entry:\n%s", cm.Data["access"])
		}

		r = mustCtl(t, 0, f.args(name, "delete", "access", "To:new.example")...)
		mustContain(t, "delete stdout", r.out, "-to:NEW.example REJECT", "written")
		cm = f.configMap(t, testNamespace, name)
		if strings.Contains(strings.ToLower(cm.Data["access"]), "new.example") {
			t.Errorf("delete left the entry:\n%s", cm.Data["access"])
		}
		if _, err := policy.Parse(bytesMap(cm.Data)); err != nil {
			t.Errorf("stored policy does not parse: %v", err)
		}

		// Deleting what is not there: exit 4, nothing written.
		r = mustCtl(t, ctl.ExitNotFound, f.args(name, "delete", "access", "To:new.example")...)
		mustContain(t, "delete missing stderr", r.errOut, `access has no entry "To:new.example"`)
		f.assertUnchanged(t, name, cm)

		// An alias goes with its continuation line.
		mustCtl(t, 0, f.args(name, "delete", "aliases", "root")...)
		cm = f.configMap(t, testNamespace, name)
		if want := "# Local aliases of the MM4 gateway.\npostmaster: root\nmmsadmin:   ops@example.com\n"; cm.Data["aliases"] != want {
			t.Errorf("aliases after delete root:\n got %q\nwant %q", cm.Data["aliases"], want)
		}

		// A mailertable route in the MMS style.
		mustCtl(t, 0, f.args(name, "add", "mailertable", "mms.mnc005.mcc238.gprs smtp:[10.1.5.1]:[10.1.5.2]")...)
		cm = f.configMap(t, testNamespace, name)
		p, err := policy.Parse(bytesMap(cm.Data))
		if err != nil {
			t.Fatalf("stored policy does not parse: %v", err)
		}
		e, ok := p.Mailertable.Lookup("mms.mnc005.mcc238.gprs")
		if !ok || len(e.Hosts) != 2 || e.Hosts[0].Name != "10.1.5.1" || e.Hosts[1].Name != "10.1.5.2" {
			t.Errorf("route of the added mailertable entry: %+v (found %v)", e, ok)
		}
	})

	t.Run("invalid change writes nothing", func(t *testing.T) {
		const name = "invalid"
		before := f.seed(t, name)
		newLine := strings.Count(fixture["access"], "\n") + 1 // the line add appends

		r := mustCtl(t, ctl.ExitInvalid, f.args(name, "add", "access", "To:x.example RELAYY")...)
		mustContain(t, "invalid add stderr", r.errOut, fmt.Sprintf("access:%d:", newLine), `unknown action "RELAYY"`, "nothing written")
		f.assertUnchanged(t, name, before)

		r = mustCtl(t, ctl.ExitInvalid, f.args(name, "set", "mailertable", "-f", "testdata/bad/mailertable")...)
		mustContain(t, "invalid set stderr", r.errOut, "mailertable:3:", `unknown mailer "uucp"`)
		f.assertUnchanged(t, name, before)

		// Every problem of a whole set is named.
		r = mustCtl(t, ctl.ExitInvalid, f.args(name, "apply", "-f", "testdata/bad")...)
		mustContain(t, "invalid apply stderr", r.errOut, "access:2:", "mailertable:3:")
		f.assertUnchanged(t, name, before)

		// Unknown keys are usage errors.
		mustCtl(t, ctl.ExitUsage, f.args(name, "add", "sendmail.cf", "O QueueDirectory=/var/spool/mqueue")...)
		f.assertUnchanged(t, name, before)
	})

	t.Run("dry run", func(t *testing.T) {
		const name = "dryrun"
		before := f.seed(t, name)

		r := mustCtl(t, 0, f.args(name, "add", "access", "To:dry.example RELAY", "--dry-run")...)
		mustContain(t, "add --dry-run stdout", r.out, "+To:dry.example RELAY", "not written (dry run)")
		f.assertUnchanged(t, name, before)

		r = mustCtl(t, 0, f.args(name, "delete", "access", "Connect:127.0.0.1", "--dry-run")...)
		mustContain(t, "delete --dry-run stdout", r.out, "-Connect:127.0.0.1", "dry run")
		f.assertUnchanged(t, name, before)

		dir := t.TempDir()
		writeFiles(t, dir, map[string]string{"mailertable": "mms.mnc002.mcc238.gprs smtp:[10.2.2.2]\n"})
		r = mustCtl(t, 0, f.args(name, "set", "mailertable", "-f", filepath.Join(dir, "mailertable"), "--dry-run")...)
		mustContain(t, "set --dry-run stdout", r.out, "-mms.mnc002.mcc238.gprs          smtp:[10.1.1.1]:[10.1.1.2]", "+mms.mnc002.mcc238.gprs smtp:[10.2.2.2]", "dry run")
		f.assertUnchanged(t, name, before)

		// A dry run still validates.
		mustCtl(t, ctl.ExitInvalid, f.args(name, "add", "access", "To:dry.example RELAYY", "--dry-run")...)
		f.assertUnchanged(t, name, before)
	})

	t.Run("diff and apply", func(t *testing.T) {
		const name = "apply"
		f.seed(t, name)

		r := mustCtl(t, 0, f.args(name, "diff", "-f", fixtureDir)...)
		if r.out != "" {
			t.Errorf("diff against the same files printed:\n%s", r.out)
		}

		dir := t.TempDir()
		newAccess := strings.Replace(fixture["access"], "To:mms.mnc002.mccXXX.gprs                       REJECT", "To:mms.mnc002.mccXXX.gprs RELAY", 1)
		want := map[string]string{"access": newAccess, "mailertable": fixture["mailertable"]}
		writeFiles(t, dir, want)

		before := f.configMap(t, testNamespace, name)
		r = mustCtl(t, ctl.ExitFailure, f.args(name, "diff", "-f", dir)...)
		mustContain(t, "diff stdout", r.out, "--- access (current)\n+++ access (new)\n@@ ",
			"-To:mms.mnc002.mccXXX.gprs                       REJECT\n+To:mms.mnc002.mccXXX.gprs RELAY\n",
			"--- aliases (current)", "-postmaster: root", "--- virtusertable (current)", "--- local-host-names (current)")
		if strings.Contains(r.out, "mailertable (current)") {
			t.Errorf("diff shows the unchanged mailertable:\n%s", r.out)
		}
		f.assertUnchanged(t, name, before)

		r = mustCtl(t, 0, f.args(name, "apply", "-f", dir, "--dry-run")...)
		mustContain(t, "apply --dry-run stdout", r.out, "+To:mms.mnc002.mccXXX.gprs RELAY", "dry run")
		f.assertUnchanged(t, name, before)

		mustCtl(t, 0, f.args(name, "apply", "-f", dir)...)
		cm := f.configMap(t, testNamespace, name)
		assertFiles(t, "ConfigMap after apply", cm.Data, want)

		r = mustCtl(t, 0, f.args(name, "diff", "-f", dir)...)
		if r.out != "" {
			t.Errorf("diff after apply printed:\n%s", r.out)
		}
	})

	t.Run("concurrent writers", func(t *testing.T) {
		const name = "concurrent"
		f.seed(t, name)
		const writers = 5
		results := make([]ctlResult, writers)
		var wg sync.WaitGroup
		for i := range writers {
			wg.Go(func() {
				results[i] = runCtl(t, f.args(name, "add", "access", fmt.Sprintf("To:d%d.example RELAY", i))...)
			})
		}
		wg.Wait()
		for i, r := range results {
			if r.code != 0 {
				t.Errorf("writer %d: %s", i, r)
			}
		}
		cm := f.configMap(t, testNamespace, name)
		access := cm.Data["access"]
		if !strings.HasPrefix(access, fixture["access"]) {
			t.Errorf("the fixture's entries were lost:\n%s", access)
		}
		for i := range writers {
			if n := strings.Count(access, fmt.Sprintf("To:d%d.example RELAY\n", i)); n != 1 {
				t.Errorf("To:d%d.example occurs %d times, want 1:\n%s", i, n, access)
			}
		}
		if got, want := strings.Count(access, "\n"), strings.Count(fixture["access"], "\n")+writers; got != want {
			t.Errorf("access has %d lines, want %d:\n%s", got, want, access)
		}
	})

	t.Run("context and namespace", func(t *testing.T) {
		// A namespace that does not exist: a clear error, for reads and writes.
		for _, args := range [][]string{
			{"get"},
			{"get", "access"},
			{"add", "access", "To:a.example RELAY"},
			{"delete", "access", "To:a.example"},
			{"diff", "-f", fixtureDir},
			{"import", fixtureDir},
		} {
			full := append(append([]string{"policy"}, args...), "--kubeconfig", k.Kubeconfig, "-n", "no-such-ns")
			r := runCtl(t, full...)
			if r.code != ctl.ExitFailure {
				t.Errorf("%s: want exit %d, got %s", strings.Join(args, " "), ctl.ExitFailure, r)
				continue
			}
			mustContain(t, strings.Join(args, " ")+" stderr", r.errOut, `namespace "no-such-ns"`)
		}

		// An unknown context: a usage error naming it.
		r := mustCtl(t, ctl.ExitUsage, "policy", "get", "--kubeconfig", k.Kubeconfig, "--context", "no-such-context")
		mustContain(t, "--context stderr", r.errOut, "no-such-context")

		// A kubeconfig that does not exist ($KUBECONFIG points nowhere too).
		r = mustCtl(t, ctl.ExitUsage, "policy", "get", "--kubeconfig", filepath.Join(t.TempDir(), "missing"))
		mustContain(t, "--kubeconfig stderr", r.errOut, "kubeconfig", "--policy-dir")

		// The context by name, without -n: the context's namespace (default).
		mustCtl(t, 0, "policy", "add", "access", "To:ctx.example RELAY", "--kubeconfig", k.Kubeconfig, "--context", "mailfwd-test", "--configmap", "by-context")
		cm := f.configMap(t, "default", "by-context")
		if cm.Data["access"] != "To:ctx.example RELAY\n" {
			t.Errorf("default/by-context access = %q", cm.Data["access"])
		}
		if cm.Labels["app.kubernetes.io/name"] != "mailfwd" {
			t.Errorf("labels of a created policy ConfigMap: %v", cm.Labels)
		}
		// -n overrides the context's namespace.
		r = mustCtl(t, 0, "policy", "get", "access", "--kubeconfig", k.Kubeconfig, "--context", "mailfwd-test", "-n", testNamespace)
		if r.out != fixture["access"] {
			t.Errorf("get with --context and -n %s: %q", testNamespace, r.out)
		}
	})

	t.Run("edit", func(t *testing.T) {
		const name = "edit"
		before := f.seed(t, name)
		scripts := t.TempDir()
		relay := writeScript(t, scripts, "relay.sh", `sed -i 's/REJECT/RELAY/' "$1"`)
		t.Setenv("VISUAL", "")
		t.Setenv("EDITOR", relay)
		r := mustCtl(t, 0, f.args(name, "edit", "access")...)
		mustContain(t, "edit stdout", r.out, "-To:mms.mnc002.mccXXX.gprs                       REJECT", "+To:mms.mnc002.mccXXX.gprs                       RELAY", "written")
		cm := f.configMap(t, testNamespace, name)
		if want := strings.ReplaceAll(fixture["access"], "REJECT", "RELAY"); cm.Data["access"] != want {
			t.Errorf("access after edit:\n got %q\nwant %q", cm.Data["access"], want)
		}
		if cm.ResourceVersion == before.ResourceVersion {
			t.Errorf("edit did not write")
		}

		// An editor that leaves an invalid file: exit 5, nothing written.
		t.Setenv("EDITOR", writeScript(t, scripts, "bad.sh", `printf 'To:bad.example RELAYY\n' >> "$1"`))
		r = mustCtl(t, ctl.ExitInvalid, f.args(name, "edit", "access")...)
		mustContain(t, "invalid edit stderr", r.errOut, fmt.Sprintf("access:%d:", strings.Count(fixture["access"], "\n")+1), "RELAYY")
		f.assertUnchanged(t, name, cm)

		// An editor that fails: nothing written either.
		t.Setenv("EDITOR", writeScript(t, scripts, "fail.sh", `echo 'To:x.example OK' >> "$1"; exit 3`))
		r = runCtl(t, f.args(name, "edit", "access")...)
		if r.code == 0 {
			t.Errorf("failing editor: %s", r)
		}
		f.assertUnchanged(t, name, cm)
	})
}

// unthrottledClient is k.Client without client-go's client-side rate limit
// (5 requests/s), which the many checks here would otherwise wait for.
// kubeWithNamespace starts a kube-apiserver holding namespace ns, with
// neither the user's kubeconfig nor a policy directory in the way of the
// commands under test, and returns it with a client.
func kubeWithNamespace(t *testing.T, ns string) (*testenv.Kube, kubernetes.Interface) {
	t.Helper()
	t.Setenv("MAILFWD_POLICY_DIR", "") // the --policy-dir default; must not divert to a directory
	t.Setenv("KUBECONFIG", filepath.Join(t.TempDir(), "no-such-kubeconfig"))
	k := testenv.StartKube(t)
	cs := unthrottledClient(t, k)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace %s: %v", ns, err)
	}
	return k, cs
}

func unthrottledClient(t *testing.T, k *testenv.Kube) kubernetes.Interface {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", k.Kubeconfig)
	if err != nil {
		t.Fatalf("load kubeconfig: %v", err)
	}
	cfg.QPS, cfg.Burst = -1, 0
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatalf("clientset: %v", err)
	}
	return cs
}

// writeScript writes an executable shell script and returns its path.
func writeScript(t *testing.T, dir, name, body string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte("#!/bin/sh\nset -e\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return path
}

func bytesMap(m map[string]string) map[string][]byte {
	out := make(map[string][]byte, len(m))
	for k, v := range m {
		out[k] = []byte(v)
	}
	return out
}

// TestPolicyCheck validates files without a cluster.
func TestPolicyCheck(t *testing.T) {
	for _, tc := range []struct {
		name  string
		args  []string
		code  int
		wants []string
	}{
		{"directory", []string{fixtureDir}, 0, []string{"valid: access (13 entries), aliases (3 entries), local-host-names (3 entries), mailertable (4 entries), virtusertable (1 entries)"}},
		{"files", []string{fixtureDir + "/access", fixtureDir + "/mailertable"}, 0, []string{"valid: access (13 entries), mailertable (4 entries)"}},
		{"bad mailertable", []string{"testdata/bad/mailertable"}, ctl.ExitInvalid, []string{"mailertable:3:", `unknown mailer "uucp"`}},
		{"bad access", []string{fixtureDir + "/mailertable", "testdata/bad/access"}, ctl.ExitInvalid, []string{"access:2:", `unknown action "RELAYY"`}},
		{"bad directory", []string{"testdata/bad"}, ctl.ExitInvalid, []string{"access:2:", "mailertable:3:"}},
		{"not a policy file name", []string{"policy_test.go"}, ctl.ExitUsage, []string{"unknown policy key"}},
		{"missing file", []string{"testdata/no-such/access"}, ctl.ExitUsage, []string{"no such file"}},
		{"no arguments", nil, ctl.ExitUsage, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := mustCtl(t, tc.code, append([]string{"policy", "check"}, tc.args...)...)
			if tc.code == 0 {
				mustContain(t, "stdout", r.out, tc.wants...)
			} else {
				mustContain(t, "stderr", r.errOut, tc.wants...)
			}
		})
	}
}

// TestPolicyDir runs the main flows against a local policy directory (--dir).
func TestPolicyDir(t *testing.T) {
	t.Setenv("MAILFWD_POLICY_DIR", "")
	fixture := readFixture(t)
	dir := filepath.Join(t.TempDir(), "policy") // created by the first write
	pol := func(args ...string) []string {
		return append(append([]string{"policy"}, args...), "--dir", dir)
	}
	// load parses dir as the daemons do, and returns its files.
	load := func(t *testing.T) (*policy.Policy, map[string]string) {
		t.Helper()
		p, err := policy.LoadDir(dir)
		if err != nil {
			t.Fatalf("policy.LoadDir: %v", err)
		}
		return p, readFiles(t, dir)
	}

	// set every key from the fixture.
	for _, k := range fixtureKeys {
		r := mustCtl(t, 0, pol("set", k, "-f", filepath.Join(fixtureDir, k))...)
		mustContain(t, "set "+k, r.out, "+++ "+k+" (new)", "directory "+dir+": written")
	}
	p, files := load(t)
	assertFiles(t, "directory after set", files, fixture)
	if e, ok := p.Mailertable.Lookup("mms.mnc002.mcc238.gprs"); !ok || len(e.Hosts) != 2 || e.Hosts[1].Name != "10.1.1.2" || !e.Hosts[1].Literal {
		t.Errorf("mailertable route of mms.mnc002.mcc238.gprs: %+v (found %v)", e, ok)
	}
	if !p.IsLocal("mm4gw1.example.com") {
		t.Errorf("mm4gw1.example.com is not local")
	}
	for _, k := range fixtureKeys {
		if st, err := os.Stat(filepath.Join(dir, k)); err != nil || st.Mode().Perm() != 0o644 {
			t.Errorf("%s: %v, mode %v", k, err, st.Mode())
		}
	}

	t.Run("get", func(t *testing.T) {
		var asJSON map[string]string
		r := mustCtl(t, 0, pol("get", "-o", "json")...)
		if err := json.Unmarshal([]byte(r.out), &asJSON); err != nil {
			t.Fatalf("get -o json: %v\n%s", err, r.out)
		}
		assertFiles(t, "get -o json", asJSON, fixture)
		r = mustCtl(t, 0, pol("get", "aliases")...)
		if r.out != fixture["aliases"] {
			t.Errorf("get aliases = %q", r.out)
		}
	})

	t.Run("add and delete", func(t *testing.T) {
		mustCtl(t, 0, pol("add", "access", "To:new.example RELAY")...)
		_, files := load(t)
		if want := fixture["access"] + "To:new.example RELAY\n"; files["access"] != want {
			t.Errorf("access after add:\n got %q\nwant %q", files["access"], want)
		}
		mustCtl(t, 0, pol("add", "access", "To:new.example REJECT")...)
		_, files = load(t)
		if want := fixture["access"] + "To:new.example REJECT\n"; files["access"] != want {
			t.Errorf("access after replacing add:\n got %q\nwant %q", files["access"], want)
		}
		mustCtl(t, 0, pol("delete", "access", "To:new.example")...)
		_, files = load(t)
		assertFiles(t, "directory after delete", files, fixture)
		mustCtl(t, ctl.ExitNotFound, pol("delete", "access", "To:new.example")...)
		_, files = load(t)
		assertFiles(t, "directory after delete of a missing entry", files, fixture)
	})

	t.Run("invalid and dry run write nothing", func(t *testing.T) {
		r := mustCtl(t, ctl.ExitInvalid, pol("add", "access", "To:x.example RELAYY")...)
		mustContain(t, "stderr", r.errOut, fmt.Sprintf("access:%d:", strings.Count(fixture["access"], "\n")+1))
		r = mustCtl(t, ctl.ExitInvalid, pol("set", "mailertable", "-f", "testdata/bad/mailertable")...)
		mustContain(t, "stderr", r.errOut, "mailertable:3:")
		r = mustCtl(t, 0, pol("add", "access", "To:dry.example RELAY", "--dry-run")...)
		mustContain(t, "stdout", r.out, "+To:dry.example RELAY", "dry run")
		// Nothing written, and no temporary files left behind.
		assertFiles(t, "directory", readFiles(t, dir), fixture)
	})

	t.Run("edit", func(t *testing.T) {
		scripts := t.TempDir()
		t.Setenv("VISUAL", "")
		t.Setenv("EDITOR", writeScript(t, scripts, "bad.sh", `sed -i 's/REJECT/RELAYY/' "$1"`))
		mustCtl(t, ctl.ExitInvalid, pol("edit", "access")...)
		assertFiles(t, "directory after an invalid edit", readFiles(t, dir), fixture)

		t.Setenv("EDITOR", writeScript(t, scripts, "relay.sh", `sed -i 's/REJECT/RELAY/' "$1"`))
		mustCtl(t, 0, pol("edit", "access")...)
		_, files := load(t)
		if want := strings.ReplaceAll(fixture["access"], "REJECT", "RELAY"); files["access"] != want {
			t.Errorf("access after edit:\n got %q\nwant %q", files["access"], want)
		}
		mustCtl(t, 0, pol("set", "access", "-f", filepath.Join(fixtureDir, "access"))...)

		// An invalid edit is re-opened with the errors on top (as kubectl edit
		// and visudo do); the second pass fixes it and that is what is written.
		seen := filepath.Join(scripts, "seen")
		t.Setenv("EDITOR", writeScript(t, scripts, "twice.sh", `if grep -q RELAYY "$1"; then
  grep -q '^#.*access:[0-9]*:.*RELAYY' "$1" && touch `+seen+`
  sed -i 's/RELAYY/RELAY/' "$1"
else
  sed -i 's/REJECT/RELAYY/' "$1"
fi`))
		r := mustCtl(t, 0, pol("edit", "access")...)
		if _, err := os.Stat(seen); err != nil {
			t.Errorf("the re-opened file did not show the error on top: %s", r)
		}
		_, files = load(t)
		if want := strings.ReplaceAll(fixture["access"], "REJECT", "RELAY"); files["access"] != want {
			t.Errorf("access after a re-opened edit (the error header must not be kept):\n got %q\nwant %q", files["access"], want)
		}
		mustCtl(t, 0, pol("set", "access", "-f", filepath.Join(fixtureDir, "access"))...)
	})

	t.Run("diff and apply", func(t *testing.T) {
		mustCtl(t, 0, pol("diff", "-f", fixtureDir)...)
		src := t.TempDir()
		want := map[string]string{"access": "Connect:10.70 RELAY\n", "mailertable": fixture["mailertable"], "settings": "from_whitelist = true\n"}
		writeFiles(t, src, want)
		r := mustCtl(t, ctl.ExitFailure, pol("diff", "-f", src)...)
		mustContain(t, "diff stdout", r.out, "+Connect:10.70 RELAY", "--- aliases (current)", "+++ settings (new)")
		mustCtl(t, 0, pol("apply", "-f", src)...)
		p, files := load(t)
		assertFiles(t, "directory after apply", files, want)
		if !p.Settings.FromWhitelist {
			t.Errorf("settings not applied")
		}
		mustCtl(t, 0, pol("diff", "-f", src)...)
	})

	t.Run("import and the environment default", func(t *testing.T) {
		// MAILFWD_POLICY_DIR is the --dir default.
		t.Setenv("MAILFWD_POLICY_DIR", dir)
		mustCtl(t, 0, "policy", "import", fixtureDir)
		p, files := load(t)
		// import replaces the keys it has files for; settings stays.
		want := maps.Clone(fixture)
		want["settings"] = "from_whitelist = true\n"
		assertFiles(t, "directory after import", files, want)
		if _, ok := p.Mailertable.Lookup("x.mnc004.mcc238.gprs"); !ok {
			t.Errorf("the .mnc004.mcc238.gprs parent route is missing")
		}
	})
}
