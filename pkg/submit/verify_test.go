package submit

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// -bv on a host with no policy directory and no Kubernetes says so once,
// in sendmail's settings vocabulary (issue 21: a client-go KUBERNETES_MASTER
// error and a suggestion of mailfwdctl's --dir).
func TestVerifyWithoutPolicySource(t *testing.T) {
	home := t.TempDir()
	env := map[string]string{"HOME": home, "MAILFWD_SENDMAIL_CONFIG": home + "/none.conf"}
	t.Setenv("HOME", home)
	t.Setenv("KUBECONFIG", "")
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	var out, errOut bytes.Buffer
	code := Main(context.Background(), "sendmail", []string{"-C", "/dev/null", "-bv", "a@example.com"},
		IO{Stdin: strings.NewReader(""), Stdout: &out, Stderr: &errOut, Getenv: func(k string) string { return env[k] }})
	if code != ExConfig {
		t.Errorf("exit %d, want %d (configuration)", code, ExConfig)
	}
	msg := errOut.String()
	if strings.Count(msg, "\n") != 1 || !strings.Contains(msg, "policy-dir") || strings.Contains(msg, "KUBERNETES_MASTER") || strings.Contains(msg, "--dir") {
		t.Errorf("want one plain line naming the policy-dir setting, got %q (stdout %q)", msg, out.String())
	}
}
