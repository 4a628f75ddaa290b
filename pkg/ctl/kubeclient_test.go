package ctl_test

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mailfwd/mailfwd/pkg/ctl"
)

// mailfwdctl reads and writes ConfigMaps and Secrets over client-go's REST
// client (kubeclient.go): a write must keep every field it does not manage
// (binaryData, annotations, labels, other keys).
func TestKubeWritesKeepWhatMailfwdctlDoesNotManage(t *testing.T) {
	const ns = "keep"
	k, cs := kubeWithNamespace(t, ns)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	meta := metav1.ObjectMeta{Namespace: ns, Annotations: map[string]string{"owner": "ops"}, Labels: map[string]string{"team": "mail"}}
	cmMeta := meta
	cmMeta.Name = "policy"
	if _, err := cs.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{ObjectMeta: cmMeta,
		Data:       map[string]string{"access": "To:a.example RELAY\n"},
		BinaryData: map[string][]byte{"extra.bin": {0, 1, 2}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	secMeta := meta
	secMeta.Name = "mailfwd-policy-secret"
	if _, err := cs.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{ObjectMeta: secMeta, Type: corev1.SecretTypeOpaque,
		Data: map[string][]byte{"users": []byte("")}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	run := func(stdin string, args ...string) string {
		t.Helper()
		var out, errOut bytes.Buffer
		args = append(args, "--kubeconfig", k.Kubeconfig, "-n", ns)
		if code := ctl.ExecuteIO(ctx, args, strings.NewReader(stdin), &out, &errOut); code != 0 {
			t.Fatalf("mailfwdctl %s: exit %d: %s", strings.Join(args, " "), code, errOut.String())
		}
		return out.String()
	}

	run("", "policy", "add", "access", "To:b.example RELAY", "--configmap", "policy")
	cm, err := cs.CoreV1().ConfigMaps(ns).Get(ctx, "policy", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(cm.Data["access"], "To:a.example") || !strings.Contains(cm.Data["access"], "To:b.example") {
		t.Errorf("access after policy add: %q", cm.Data["access"])
	}
	if !bytes.Equal(cm.BinaryData["extra.bin"], []byte{0, 1, 2}) || cm.Annotations["owner"] != "ops" || cm.Labels["team"] != "mail" {
		t.Errorf("policy add lost what it does not manage: binaryData %v annotations %v labels %v", cm.BinaryData, cm.Annotations, cm.Labels)
	}
	if got := run("", "policy", "get", "access", "--configmap", "policy"); !strings.Contains(got, "To:b.example") {
		t.Errorf("policy get: %q", got)
	}

	run("s3cret\n", "users", "add", "app1", "--sender", "example.com", "--password-stdin")
	sec, err := cs.CoreV1().Secrets(ns).Get(ctx, "mailfwd-policy-secret", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(sec.Data["users"]), "app1\t") || sec.Type != corev1.SecretTypeOpaque ||
		sec.Annotations["owner"] != "ops" || sec.Labels["team"] != "mail" {
		t.Errorf("Secret after users add: type %q data %q annotations %v labels %v", sec.Type, sec.Data, sec.Annotations, sec.Labels)
	}

	// A missing namespace is an error that names it, not an empty policy.
	var out, errOut bytes.Buffer
	if code := ctl.ExecuteIO(ctx, []string{"policy", "get", "access", "--kubeconfig", k.Kubeconfig, "-n", "nosuch"}, nil, &out, &errOut); code == 0 ||
		!strings.Contains(errOut.String(), `namespace "nosuch" not found`) {
		t.Errorf("policy get in a missing namespace: exit %d: %s", code, errOut.String())
	}
}
