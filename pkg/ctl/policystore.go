package ctl

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/spf13/pflag"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/mailfwd/mailfwd/pkg/config"
)

// PolicyKeys are the ConfigMap keys (files) mailfwd reads, in display order.
var PolicyKeys = []string{"access", "mailertable", "aliases", "virtusertable", "local-host-names", "settings", "tls_policy",
	"masquerade", "genericstable", "senderroutes", "shaping", "quota"}

// policyStore is where the policy lives: a ConfigMap, or a directory.
type policyStore interface {
	// Load returns the files and a version for optimistic concurrency.
	Load(ctx context.Context) (map[string][]byte, string, error)
	// Save replaces every key with files; version guards against a
	// concurrent writer (a conflict error if it changed).
	Save(ctx context.Context, files map[string][]byte, version string) error
	Where() string
	// Who is the user the write is made as, for the audit trail.
	Who(ctx context.Context) string
}

var errConflict = errors.New("the policy changed while this command ran")

// dirStore is a policy directory. keys nil means PolicyKeys (the
// ConfigMap's); mode 0 means 0644 (secret keys are written 0600).
type dirStore struct {
	dir  string
	keys []string
	mode os.FileMode
}

func (d dirStore) Where() string { return "directory " + d.dir }

func (d dirStore) Who(context.Context) string { return localUser() }

func (d dirStore) keyList() []string {
	if d.keys == nil {
		return PolicyKeys
	}
	return d.keys
}

func (d dirStore) Load(context.Context) (map[string][]byte, string, error) {
	files := map[string][]byte{}
	for _, k := range d.keyList() {
		b, err := os.ReadFile(filepath.Join(d.dir, k))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, "", err
		}
		files[k] = b
	}
	return files, fingerprint(files), nil
}

func (d dirStore) Save(ctx context.Context, files map[string][]byte, version string) error {
	if err := os.MkdirAll(d.dir, 0o755); err != nil {
		return err
	}
	if _, cur, err := d.Load(ctx); err == nil && version != "" && cur != version {
		return errConflict
	}
	for _, k := range d.keyList() {
		path := filepath.Join(d.dir, k)
		b, ok := files[k]
		if !ok {
			if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
			continue
		}
		tmp, err := os.CreateTemp(d.dir, "."+k+".tmp*")
		if err != nil {
			return err
		}
		if _, err := tmp.Write(b); err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
			return err
		}
		if err := tmp.Close(); err != nil {
			os.Remove(tmp.Name())
			return err
		}
		mode := d.mode
		if mode == 0 {
			mode = 0o644
		}
		if err := os.Chmod(tmp.Name(), mode); err != nil {
			return err
		}
		if err := os.Rename(tmp.Name(), path); err != nil {
			return err
		}
	}
	return nil
}

func fingerprint(files map[string][]byte) string {
	keys := make([]string, 0, len(files))
	for k := range files {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s:%d:%x;", k, len(files[k]), files[k])
	}
	return b.String()
}

type configMapStore struct {
	client    coreClient
	namespace string
	name      string
	kf        *kubeFlags
}

func (c configMapStore) Who(ctx context.Context) string { return kubeUser(ctx, c.client, c.kf) }

func (c configMapStore) Where() string {
	return fmt.Sprintf("ConfigMap %s/%s", c.namespace, c.name)
}

func (c configMapStore) Load(ctx context.Context) (map[string][]byte, string, error) {
	return kubeLoad(ctx, c.client, c.client.CoreV1().ConfigMaps(c.namespace), c.namespace, c.name, c.Where(),
		func(cm *corev1.ConfigMap) map[string][]byte {
			files := map[string][]byte{}
			for k, v := range cm.Data {
				files[k] = []byte(v)
			}
			return files
		})
}

func (c configMapStore) Save(ctx context.Context, files map[string][]byte, version string) error {
	data := map[string]string{}
	for k, v := range files {
		data[k] = string(v)
	}
	return kubeSave(ctx, c.client.CoreV1().ConfigMaps(c.namespace), c.name, c.Where(), version,
		&corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: c.name, Namespace: c.namespace, Labels: map[string]string{
				"app.kubernetes.io/name": "mailfwd", "app.kubernetes.io/component": "policy"}},
			Data: data,
		},
		func(cm *corev1.ConfigMap) { cm.Data = data })
}

// kubeObject is a ConfigMap or a Secret (a pointer to one).
type kubeObject interface {
	runtime.Object
	metav1.Object
}

// kubeLoad gets the object and returns its files and version; a missing
// object is an empty policy, but a missing namespace (a typo in -n) is an
// error, not an empty policy. A caller that may not read namespaces gets
// the empty policy.
func kubeLoad[P kubeObject](ctx context.Context, client coreClient, c kubeObjects[P], namespace, name, where string, files func(P) map[string][]byte) (map[string][]byte, string, error) {
	obj, err := c.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		if _, nerr := client.CoreV1().Namespaces().Get(ctx, namespace, metav1.GetOptions{}); apierrors.IsNotFound(nerr) {
			return nil, "", fmt.Errorf("read %s: namespace %q not found", where, namespace)
		}
		return map[string][]byte{}, "", nil
	}
	if err != nil {
		return nil, "", fmt.Errorf("read %s: %w", where, err)
	}
	return files(obj), obj.GetResourceVersion(), nil
}

// kubeSave creates the object when there was none (version ""), or else
// sets the new content on it with update and writes it if it is still at
// version; a concurrent writer is errConflict.
func kubeSave[P kubeObject](ctx context.Context, c kubeObjects[P], name, where, version string, create P, update func(P)) error {
	if version == "" {
		_, err := c.Create(ctx, create, metav1.CreateOptions{FieldManager: "mailfwdctl"})
		if apierrors.IsAlreadyExists(err) {
			return errConflict
		}
		if err != nil {
			return fmt.Errorf("create %s: %w", where, err)
		}
		return nil
	}
	cur, err := c.Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("read %s: %w", where, err)
	}
	if cur.GetResourceVersion() != version {
		return errConflict
	}
	update(cur)
	if _, err := c.Update(ctx, cur, metav1.UpdateOptions{FieldManager: "mailfwdctl"}); err != nil {
		if apierrors.IsConflict(err) {
			return errConflict
		}
		return fmt.Errorf("update %s: %w", where, err)
	}
	return nil
}

// kubeFlags are kubectl's connection flags.
type kubeFlags struct {
	kubeconfig, context, namespace, configMap, dir string
}

func (k *kubeFlags) register(pf *pflag.FlagSet) {
	pf.StringVar(&k.kubeconfig, "kubeconfig", "", "path to the kubeconfig file (default: $KUBECONFIG or ~/.kube/config, or in-cluster)")
	pf.StringVar(&k.context, "context", "", "kubeconfig context to use")
	pf.StringVarP(&k.namespace, "namespace", "n", "", "namespace of the policy ConfigMap (default: the context's)")
	pf.StringVar(&k.configMap, "configmap", "mailfwd-policy", "name of the policy ConfigMap")
	registerPolicyDir(pf, &k.dir, "use a local policy directory instead of a ConfigMap (the daemons' --policy-dir; make run uses var/policy; env MAILFWD_POLICY_DIR)")
}

// registerPolicyDir adds --policy-dir, the one name the daemons,
// mailfwd-sendmail and mailfwdctl share, and the old --dir as a hidden alias.
func registerPolicyDir(pf *pflag.FlagSet, p *string, usage string) {
	pf.StringVar(p, "policy-dir", os.Getenv("MAILFWD_POLICY_DIR"), usage)
	pf.StringVar(p, "dir", os.Getenv("MAILFWD_POLICY_DIR"), "old name of --policy-dir")
	_ = pf.MarkHidden("dir")
}

// errNoPolicySource is what a command that reads the policy says on a host
// with neither a policy directory nor a Kubernetes cluster, in one line.
var errNoPolicySource = usageError("no policy directory and no Kubernetes cluster here (no kubeconfig, not in a pod): give --policy-dir DIR (env MAILFWD_POLICY_DIR), or --kubeconfig for a cluster")

func (k *kubeFlags) store() (policyStore, error) {
	if k.dir != "" {
		return dirStore{dir: k.dir}, nil
	}
	cs, ns, err := k.clientset()
	if err != nil {
		return nil, err
	}
	return configMapStore{client: cs, namespace: ns, name: k.configMap, kf: k}, nil
}

// load reads the policy (ConfigMap or directory) as it is now.
func (k *kubeFlags) load(ctx context.Context) (policyStore, map[string][]byte, error) {
	return loadNow(ctx, k.store)
}

// loadNow opens the store and reads it as it is now.
func loadNow(ctx context.Context, open func() (policyStore, error)) (policyStore, map[string][]byte, error) {
	st, err := open()
	if err != nil {
		return nil, nil, err
	}
	files, _, err := st.Load(ctx)
	return st, files, err
}

// coreClient is the part of a clientset mailfwdctl uses (ConfigMaps,
// Secrets, Namespaces), with client-go's method shapes; kubeclient.go makes
// it without linking every API group of Kubernetes.
type coreClient interface {
	CoreV1() kubeCoreV1
	// AuthenticationV1 asks who we are (SelfSubjectReview) for the audit trail.
	AuthenticationV1() kubeAuthenticationV1
}

// clientset connects as kubectl would, and returns the namespace to use.

func (k *kubeFlags) clientset() (coreClient, string, error) {
	if !config.KubernetesHere(k.kubeconfig, os.Getenv) {
		return nil, "", errNoPolicySource
	}
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = k.kubeconfig
	overrides := &clientcmd.ConfigOverrides{CurrentContext: k.context}
	if k.namespace != "" {
		overrides.Context.Namespace = k.namespace
	}
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, overrides)
	rc, err := cc.ClientConfig()
	if err != nil {
		return nil, "", &ExitError{Code: ExitUsage, Err: fmt.Errorf("kubeconfig: %w (or use --policy-dir for a local policy directory)", err)}
	}
	ns, _, err := cc.Namespace()
	if err != nil {
		return nil, "", err
	}
	cs, err := newKubeClient(rc)
	if err != nil {
		return nil, "", err
	}
	return cs, ns, nil
}
