package ctl

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/spf13/pflag"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mailfwd/mailfwd/pkg/policy"
)

// secretStore is the policy Secret (users, authinfo, dkim): the secret half
// of the policy directory, mounted beside the ConfigMap by a projected
// volume.
type secretStore struct {
	client    coreClient
	namespace string
	name      string
	kf        *kubeFlags
}

func (s secretStore) Who(ctx context.Context) string { return kubeUser(ctx, s.client, s.kf) }

func (s secretStore) Where() string { return fmt.Sprintf("Secret %s/%s", s.namespace, s.name) }

func (s secretStore) Load(ctx context.Context) (map[string][]byte, string, error) {
	return kubeLoad(ctx, s.client, s.client.CoreV1().Secrets(s.namespace), s.namespace, s.name, s.Where(),
		func(sec *corev1.Secret) map[string][]byte {
			files := make(map[string][]byte, len(sec.Data)) // never nil: the commands add to it
			maps.Copy(files, sec.Data)
			return files
		})
}

func (s secretStore) Save(ctx context.Context, files map[string][]byte, version string) error {
	return kubeSave(ctx, s.client.CoreV1().Secrets(s.namespace), s.name, s.Where(), version,
		&corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: s.name, Namespace: s.namespace, Labels: map[string]string{
				"app.kubernetes.io/name": "mailfwd", "app.kubernetes.io/component": "policy-secret"}},
			Type: corev1.SecretTypeOpaque,
			Data: files,
		},
		func(sec *corev1.Secret) { sec.Data, sec.StringData = files, nil })
}

// secretFlags are kubectl's connection flags plus the Secret's name.
type secretFlags struct {
	kube   kubeFlags
	secret string
}

func (f *secretFlags) register(pf *pflag.FlagSet) {
	pf.StringVar(&f.kube.kubeconfig, "kubeconfig", "", "path to the kubeconfig file (default: $KUBECONFIG or ~/.kube/config, or in-cluster)")
	pf.StringVar(&f.kube.context, "context", "", "kubeconfig context to use")
	pf.StringVarP(&f.kube.namespace, "namespace", "n", "", "namespace of the policy Secret (default: the context's)")
	pf.StringVar(&f.secret, "secret", "mailfwd-policy-secret", "name of the policy Secret (users, authinfo, dkim)")
	registerPolicyDir(pf, &f.kube.dir, "use a local policy directory instead of the Secret (files written 0600; the daemons' --policy-dir; env MAILFWD_POLICY_DIR)")
}

func (f *secretFlags) store() (policyStore, error) {
	if f.kube.dir != "" {
		return dirStore{dir: f.kube.dir, keys: policy.SecretKeys(), mode: 0o600}, nil
	}
	cs, ns, err := f.kube.clientset()
	if err != nil {
		return nil, err
	}
	return secretStore{client: cs, namespace: ns, name: f.secret, kf: &f.kube}, nil
}

// load reads the policy Secret (or the local directory) as it is now.
func (f *secretFlags) load(ctx context.Context) (policyStore, map[string][]byte, error) {
	return loadNow(ctx, f.store)
}

// newSecretList is the list command of one key of the policy Secret: rows
// makes the rows to show from the Secret's files, printed as json/yaml or as
// a table (header, then line of each row) under the store's name.
func newSecretList[V any](g *globals, sf *secretFlags, short, header string, rows func(files map[string][]byte) ([]V, error), line func(V) string) *cobra.Command {
	var out printer
	cmd := &cobra.Command{
		Use:   "list",
		Short: short,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, files, err := sf.load(cmd.Context())
			if err != nil {
				return err
			}
			views, err := rows(files)
			if err != nil {
				return err
			}
			return out.print(g.out, views, func(tw *tabwriter.Writer) {
				fmt.Fprintf(tw, "# %s\n%s\n", st.Where(), header)
				for _, v := range views {
					fmt.Fprintln(tw, line(v))
				}
			})
		},
	}
	out.register(cmd)
	return cmd
}

// secretChangeCmd is changeCmd for the policy Secret: the change returns a
// one-line summary (secrets are never shown as a diff).
func secretChangeCmd(g *globals, sf *secretFlags, cmd *cobra.Command, plan func(cmd *cobra.Command, args []string) (func(files map[string][]byte) (string, error), error)) *cobra.Command {
	return changeCmd(cmd, plan, func(ctx context.Context, action string, dryRun bool, change func(map[string][]byte) (string, error)) error {
		return g.mutateSecret(ctx, action, sf, dryRun, change)
	})
}

// mutateSecret loads the Secret, applies change, validates the result as
// policy, and saves it, retrying on a concurrent change. change returns a
// one-line summary; secrets are never printed as a diff.
func (g *globals) mutateSecret(ctx context.Context, action string, sf *secretFlags, dryRun bool, change func(files map[string][]byte) (string, error)) error {
	st, err := sf.store()
	if err != nil {
		return err
	}
	return g.mutateStore(ctx, action, st, dryRun,
		func(files map[string][]byte) (string, error) {
			for k := range files {
				if !slices.Contains(policy.SecretKeys(), k) {
					return "", &ExitError{Code: ExitInvalid, Err: fmt.Errorf("%s has key %q, which is not a policy Secret key (%v)", st.Where(), k, policy.SecretKeys())}
				}
			}
			return change(files)
		},
		func(_, _ map[string][]byte, summary string) bool {
			fmt.Fprintln(g.out, summary)
			return true
		})
}

// readSecretKeys adds the Secret's keys found in dir to files (policy check
// of a directory that holds both halves, as the pods' mount does).
func readSecretKeys(dir string, files map[string][]byte) error {
	for _, k := range policy.SecretKeys() {
		b, err := os.ReadFile(filepath.Join(dir, k))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return &ExitError{Code: ExitUsage, Err: err}
		}
		files[k] = b
	}
	return nil
}
