package ctl

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/pmezard/go-difflib/difflib"
	"github.com/spf13/cobra"

	"github.com/mailfwd/mailfwd/pkg/policy"
)

// ExitInvalid: the policy given does not validate (nothing was written).
const ExitInvalid = 5

func validate(files map[string][]byte) (*policy.Policy, error) {
	p, err := policy.Parse(files)
	if err != nil {
		return nil, &ExitError{Code: ExitInvalid, Err: fmt.Errorf("invalid policy, nothing written: %w", err)}
	}
	return p, nil
}

func newPolicyCmd(g *globals) *cobra.Command {
	var kf kubeFlags
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Read and change the sendmail-style policy (access, mailertable, aliases, virtusertable, local-host-names)",
		Long: `The policy is kept as sendmail-format text, one key per file, in a ConfigMap
(default mailfwd-policy, kubectl's --kubeconfig/--context/-n) or a local directory (--policy-dir).
Every change is validated as a whole before anything is written.

  makemap hash access < access      mailfwdctl policy set access -f access
  vi /etc/mail/access; makemap …    mailfwdctl policy edit access
  newaliases                        (nothing: pods reload on change)
  cp -r /etc/mail → cluster         mailfwdctl policy import /etc/mail`,
	}
	kf.register(cmd.PersistentFlags())
	cmd.AddCommand(newPolicyGet(g, &kf), newPolicySet(g, &kf), newPolicyAdd(g, &kf), newPolicyDelete(g, &kf),
		newPolicyEdit(g, &kf), newPolicyCheck(g), newPolicyDiff(g, &kf), newPolicyApply(g, &kf), newPolicyImport(g, &kf))
	return cmd
}

func checkKey(k string) error {
	if !slices.Contains(PolicyKeys, k) {
		return &ExitError{Code: ExitUsage, Err: fmt.Errorf("unknown policy key %q (one of %s)", k, strings.Join(PolicyKeys, ", "))}
	}
	return nil
}

// mutate loads, changes, validates and saves the policy, showing the change
// as a diff, retrying on a concurrent change.
func (g *globals) mutate(ctx context.Context, action string, kf *kubeFlags, dryRun bool, change func(files map[string][]byte) error) error {
	st, err := kf.store()
	if err != nil {
		return err
	}
	return g.mutateStore(ctx, action, st, dryRun,
		func(files map[string][]byte) (string, error) { return "", change(files) },
		func(before, after map[string][]byte, _ string) bool {
			diff := diffFiles(before, after)
			if diff == "" {
				fmt.Fprintf(g.out, "%s: no change\n", st.Where())
				return false
			}
			fmt.Fprint(g.out, diff)
			return true
		})
}

// mutateStore is the write cycle of mutate and mutateSecret: load st, apply
// change (which returns a one-line summary for the audit trail), validate
// the result as policy, show it (show returns false when there is nothing to
// write), and save it unless dryRun, retrying on a concurrent change.
func (g *globals) mutateStore(ctx context.Context, action string, st policyStore, dryRun bool,
	change func(files map[string][]byte) (string, error), show func(before, after map[string][]byte, summary string) bool) error {
	for range 5 {
		files, version, err := st.Load(ctx)
		if err != nil {
			return err
		}
		before := cloneFiles(files)
		summary, err := change(files)
		if err != nil {
			return err
		}
		if _, err := validate(files); err != nil {
			return err
		}
		if !show(before, files, summary) {
			return nil
		}
		if dryRun {
			fmt.Fprintf(g.out, "%s: valid; not written (dry run)\n", st.Where())
			return nil
		}
		err = st.Save(ctx, files, version)
		if errors.Is(err, errConflict) {
			continue
		}
		if err != nil {
			return err
		}
		fmt.Fprintf(g.out, "%s: written\n", st.Where())
		g.auditPolicy(ctx, action, st.Who(ctx), st.Where(), changedKeys(before, files), summary)
		return nil
	}
	return fmt.Errorf("%w; gave up after 5 tries", errConflict)
}

func cloneFiles(m map[string][]byte) map[string][]byte {
	out := make(map[string][]byte, len(m))
	for k, v := range m {
		out[k] = slices.Clone(v)
	}
	return out
}

func diffFiles(a, b map[string][]byte) string {
	var out strings.Builder
	for _, k := range PolicyKeys {
		if bytes.Equal(a[k], b[k]) {
			continue
		}
		d, _ := difflib.GetUnifiedDiffString(difflib.UnifiedDiff{
			A: difflib.SplitLines(string(a[k])), B: difflib.SplitLines(string(b[k])),
			FromFile: k + " (current)", ToFile: k + " (new)", Context: 2,
		})
		out.WriteString(d)
		if !strings.HasSuffix(d, "\n") {
			out.WriteString("\n")
		}
	}
	return out.String()
}

func newPolicyGet(g *globals, kf *kubeFlags) *cobra.Command {
	var out printer
	cmd := &cobra.Command{
		Use:   "get [KEY]",
		Short: "Show the policy, or one key as sendmail text",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, files, err := kf.load(cmd.Context())
			if err != nil {
				return err
			}
			if len(args) == 1 {
				if err := checkKey(args[0]); err != nil {
					return err
				}
				if out.format == "table" {
					_, err := g.out.Write(files[args[0]])
					return err
				}
				return out.print(g.out, map[string]string{args[0]: string(files[args[0]])}, nil)
			}
			m := map[string]string{}
			for k, v := range files {
				m[k] = string(v)
			}
			return out.print(g.out, m, func(tw *tabwriter.Writer) {
				fmt.Fprintf(tw, "# %s\n", st.Where())
				fmt.Fprintf(tw, "KEY\tENTRIES\tBYTES\n")
				for _, k := range PolicyKeys {
					fmt.Fprintf(tw, "%s\t%d\t%d\n", k, countEntries(files[k]), len(files[k]))
				}
			})
		},
	}
	out.register(cmd)
	return cmd
}

func countEntries(b []byte) int {
	n := 0
	for _, l := range strings.Split(string(b), "\n") {
		t := strings.TrimSpace(l)
		if t == "" || strings.HasPrefix(t, "#") || l[0] == ' ' || l[0] == '\t' {
			continue
		}
		n++
	}
	return n
}

// entryLines are b's lines, trimmed, leaving out blank and comment lines.
func entryLines(b []byte) []string {
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if t := strings.TrimSpace(l); t != "" && t[0] != '#' {
			out = append(out, t)
		}
	}
	return out
}

func readInput(cmd *cobra.Command, file string) ([]byte, error) {
	if file == "-" {
		return io.ReadAll(cmd.InOrStdin())
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, &ExitError{Code: ExitUsage, Err: err}
	}
	return b, nil
}

func newPolicySet(g *globals, kf *kubeFlags) *cobra.Command {
	var file string
	cmd := policyChangeCmd(g, kf, &cobra.Command{
		Use:   "set KEY -f FILE",
		Short: "Replace one key with a file's content (- for stdin)",
		Args:  cobra.ExactArgs(1),
	}, func(cmd *cobra.Command, args []string) (func(map[string][]byte) error, error) {
		if err := checkKey(args[0]); err != nil {
			return nil, err
		}
		if file == "" {
			return nil, usageError("-f FILE is required (- for stdin)")
		}
		b, err := readInput(cmd, file)
		if err != nil {
			return nil, err
		}
		return func(files map[string][]byte) error {
			files[args[0]] = b
			return nil
		}, nil
	})
	cmd.Flags().StringVarP(&file, "filename", "f", "", "file with the new content, - for stdin")
	return cmd
}

// policyChangeCmd is changeCmd for the policy (ConfigMap or directory).
func policyChangeCmd(g *globals, kf *kubeFlags, cmd *cobra.Command, plan func(cmd *cobra.Command, args []string) (func(files map[string][]byte) error, error)) *cobra.Command {
	return changeCmd(cmd, plan, func(ctx context.Context, action string, dryRun bool, change func(map[string][]byte) error) error {
		return g.mutate(ctx, action, kf, dryRun, change)
	})
}

// changeCmd finishes cmd as a command that changes the policy or its
// Secret: plan checks the arguments, reads or asks for what the change
// needs and returns it, and apply makes it (g.mutate, g.mutateSecret);
// --dry-run validates and shows the change, writing nothing.
func changeCmd[C any](cmd *cobra.Command, plan func(cmd *cobra.Command, args []string) (C, error), apply func(ctx context.Context, action string, dryRun bool, change C) error) *cobra.Command {
	var dryRun bool
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		change, err := plan(cmd, args)
		if err != nil {
			return err
		}
		return apply(cmd.Context(), actionOf(cmd), dryRun, change)
	}
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "validate and show the change, write nothing")
	return cmd
}

func newPolicyAdd(g *globals, kf *kubeFlags) *cobra.Command {
	return policyChangeCmd(g, kf, &cobra.Command{
		Use:     "add KEY 'ENTRY'",
		Short:   "Add (or replace) one entry, e.g. add access 'To:example.com RELAY'",
		Example: "  mailfwdctl policy add access 'Connect:10.70 RELAY'\n  mailfwdctl policy add mailertable 'mms.mnc001.mcc238.gprs smtp:[10.1.1.1]:[10.1.1.2]'\n  mailfwdctl policy add aliases 'postmaster: ops@example.com'",
		Args:    cobra.ExactArgs(2),
	}, func(_ *cobra.Command, args []string) (func(map[string][]byte) error, error) {
		key, entry := args[0], strings.TrimSpace(args[1])
		if err := checkKey(key); err != nil {
			return nil, err
		}
		return func(files map[string][]byte) error {
			lines, _ := removeEntry(files[key], key, entryKey(key, entry))
			files[key] = []byte(strings.Join(append(lines, entry), "\n") + "\n")
			return nil
		}, nil
	})
}

func newPolicyDelete(g *globals, kf *kubeFlags) *cobra.Command {
	return policyChangeCmd(g, kf, &cobra.Command{
		Use:     "delete KEY LHS",
		Short:   "Delete the entry with this left-hand side, e.g. delete access To:example.com",
		Example: "  mailfwdctl policy delete access To:mms.mnc002.mcc238.gprs\n  mailfwdctl policy delete aliases postmaster",
		Args:    cobra.ExactArgs(2),
	}, func(_ *cobra.Command, args []string) (func(map[string][]byte) error, error) {
		if err := checkKey(args[0]); err != nil {
			return nil, err
		}
		return func(files map[string][]byte) error {
			lines, n := removeEntry(files[args[0]], args[0], args[1])
			if n == 0 {
				return &ExitError{Code: ExitNotFound, Err: fmt.Errorf("%s has no entry %q", args[0], args[1])}
			}
			files[args[0]] = []byte(strings.Join(lines, "\n") + "\n")
			return nil
		}, nil
	})
}

// entryKey is the left-hand side of an entry line.
func entryKey(key, entry string) string {
	if key == "aliases" {
		name, _, _ := strings.Cut(entry, ":")
		return strings.TrimSpace(name)
	}
	if f := strings.Fields(entry); len(f) > 0 {
		return f[0]
	}
	return ""
}

// removeEntry drops the entry (and, for aliases, its continuation lines)
// whose left-hand side is lhs (case-insensitive); comments stay.
func removeEntry(b []byte, key, lhs string) ([]string, int) {
	text := strings.TrimRight(string(b), "\n")
	var out []string
	if text == "" {
		return out, 0
	}
	removed, skipping := 0, false
	for _, l := range strings.Split(text, "\n") {
		cont := key == "aliases" && l != "" && (l[0] == ' ' || l[0] == '\t')
		if cont && skipping {
			continue
		}
		skipping = false
		t := strings.TrimSpace(l)
		if !cont && t != "" && !strings.HasPrefix(t, "#") && strings.EqualFold(entryKey(key, t), lhs) {
			removed++
			skipping = true
			continue
		}
		out = append(out, l)
	}
	return out, removed
}

func newPolicyEdit(g *globals, kf *kubeFlags) *cobra.Command {
	return policyChangeCmd(g, kf, &cobra.Command{
		Use:   "edit KEY",
		Short: "Edit one key in $EDITOR; it is validated before it is written",
		Args:  cobra.ExactArgs(1),
	}, func(_ *cobra.Command, args []string) (func(map[string][]byte) error, error) {
		if err := checkKey(args[0]); err != nil {
			return nil, err
		}
		editor := os.Getenv("VISUAL")
		if editor == "" {
			editor = os.Getenv("EDITOR")
		}
		if editor == "" {
			editor = "vi"
		}
		return func(files map[string][]byte) error {
			return editUntilValid(editor, args[0], files)
		}, nil
	})
}

// maxEditRounds bounds how often an invalid edit is re-opened.
const maxEditRounds = 20

// editHeader starts the error block put on top of a re-opened invalid edit;
// it is taken off again before the file is validated.
const editHeader = "# mailfwdctl: this edit is not valid and was not saved. Fix it, or save it\n# unchanged to give up. These lines are removed when you save.\n"

// editUntilValid opens files[key] in the editor and, like kubectl edit and
// visudo, re-opens an edit that does not validate with the errors on top,
// until it validates, comes back unchanged (the user gives up: the
// validation error is returned), or maxEditRounds pass.
func editUntilValid(editor, key string, files map[string][]byte) error {
	tmp, err := os.CreateTemp("", "mailfwd-"+key+"-*")
	if err != nil {
		return err
	}
	tmp.Close()
	defer os.Remove(tmp.Name())
	content := files[key]
	var header string
	for round := 0; ; round++ {
		if err := os.WriteFile(tmp.Name(), append([]byte(header), content...), 0o600); err != nil {
			return err
		}
		ed := exec.Command("sh", "-c", editor+` "$1"`, "editor", tmp.Name())
		ed.Stdin, ed.Stdout, ed.Stderr = os.Stdin, os.Stdout, os.Stderr
		if err := ed.Run(); err != nil {
			return fmt.Errorf("editor %q: %w", editor, err)
		}
		b, err := os.ReadFile(tmp.Name())
		if err != nil {
			return err
		}
		b = stripEditHeader(b)
		unchanged := round > 0 && bytes.Equal(b, content)
		content = b
		files[key] = b
		_, verr := validate(files)
		if verr == nil || unchanged || round+1 >= maxEditRounds {
			return verr
		}
		var h strings.Builder
		h.WriteString(editHeader)
		for _, line := range strings.Split(strings.TrimSpace(verr.Error()), "\n") {
			fmt.Fprintf(&h, "#   %s\n", line)
		}
		h.WriteString("#\n")
		header = h.String()
	}
}

// stripEditHeader takes off the error block editUntilValid put on top (up
// to its closing "#" line), even when the user edited inside it.
func stripEditHeader(b []byte) []byte {
	if !bytes.HasPrefix(b, []byte(editHeader[:strings.IndexByte(editHeader, '.')])) {
		return b
	}
	if i := bytes.Index(b, []byte("\n#\n")); i >= 0 {
		return b[i+3:]
	}
	return b
}

// readPolicyDir reads the known keys from a directory (apply, diff, check).
func readPolicyDir(dir string, keysFromSendmail bool) (map[string][]byte, []string, error) {
	files := map[string][]byte{}
	var found []string
	for _, k := range PolicyKeys {
		candidates := []string{filepath.Join(dir, k)}
		if keysFromSendmail && k == "aliases" {
			candidates = append(candidates, "/etc/aliases")
		}
		for _, path := range candidates {
			b, err := os.ReadFile(path)
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err != nil {
				return nil, nil, &ExitError{Code: ExitUsage, Err: err}
			}
			files[k] = b
			found = append(found, path)
			break
		}
	}
	return files, found, nil
}

func newPolicyCheck(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "check FILE…",
		Short: "Validate policy files without writing anything (key = file name: access, mailertable, …)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			files := map[string][]byte{}
			for _, a := range args {
				st, err := os.Stat(a)
				if err != nil {
					return &ExitError{Code: ExitUsage, Err: err}
				}
				if st.IsDir() {
					fs, _, err := readPolicyDir(a, false)
					if err != nil {
						return err
					}
					if err := readSecretKeys(a, fs); err != nil {
						return err
					}
					for k, v := range fs {
						files[k] = v
					}
					continue
				}
				k := filepath.Base(a)
				if err := checkKey(k); err != nil && !slices.Contains(policy.SecretKeys(), k) {
					return err // users, authinfo and dkim (the Secret's keys) can be checked too
				}
				b, err := os.ReadFile(a)
				if err != nil {
					return &ExitError{Code: ExitUsage, Err: err}
				}
				files[k] = b
			}
			if _, err := validate(files); err != nil {
				return &ExitError{Code: ExitInvalid, Err: fmt.Errorf("%v", strings.TrimPrefix(err.Error(), "invalid policy, nothing written: "))}
			}
			keys := make([]string, 0, len(files))
			for k := range files {
				keys = append(keys, fmt.Sprintf("%s (%d entries)", k, countEntries(files[k])))
			}
			slices.Sort(keys)
			fmt.Fprintf(g.out, "valid: %s\n", strings.Join(keys, ", "))
			return nil
		},
	}
}

func newPolicyDiff(g *globals, kf *kubeFlags) *cobra.Command {
	var dir string
	cmd := &cobra.Command{
		Use:   "diff -f DIR",
		Short: "Show how a policy directory differs from what is in force (exit 1 when different, as diff)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dir == "" {
				return usageError("-f DIR is required")
			}
			want, _, err := readPolicyDir(dir, false)
			if err != nil {
				return err
			}
			_, cur, err := kf.load(cmd.Context())
			if err != nil {
				return err
			}
			d := diffFiles(cur, want)
			fmt.Fprint(g.out, d)
			if d != "" {
				return &ExitError{Code: ExitFailure, Err: errors.New("differences found")}
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&dir, "filename", "f", "", "policy directory")
	return cmd
}

func newPolicyApply(g *globals, kf *kubeFlags) *cobra.Command {
	var dir string
	cmd := policyChangeCmd(g, kf, &cobra.Command{
		Use:   "apply -f DIR",
		Short: "Replace the whole policy with a directory's files (keys missing there are removed)",
		Args:  cobra.NoArgs,
	}, func(*cobra.Command, []string) (func(map[string][]byte) error, error) {
		if dir == "" {
			return nil, usageError("-f DIR is required")
		}
		want, _, err := readPolicyDir(dir, false)
		if err != nil {
			return nil, err
		}
		return func(files map[string][]byte) error {
			clear(files)
			maps.Copy(files, want)
			return nil
		}, nil
	})
	cmd.Flags().StringVarP(&dir, "filename", "f", "", "policy directory")
	return cmd
}

func newPolicyImport(g *globals, kf *kubeFlags) *cobra.Command {
	return policyChangeCmd(g, kf, &cobra.Command{
		Use:   "import [/etc/mail]",
		Short: "Import a sendmail configuration directory (access, mailertable, aliases, virtusertable, local-host-names, genericstable, sendmail.mc masquerading)",
		Long: `Reads the makemap source files of a sendmail /etc/mail directory (access, mailertable,
virtusertable, local-host-names, genericstable, and aliases from the directory or
/etc/aliases) and the MASQUERADE_AS, MASQUERADE_DOMAIN, MASQUERADE_EXCEPTION and
EXPOSED_USER lines of its sendmail.mc, and replaces those keys of the policy. Keys with
no file are left as they are.`,
		Args: cobra.MaximumNArgs(1),
	}, func(_ *cobra.Command, args []string) (func(map[string][]byte) error, error) {
		dir := "/etc/mail"
		if len(args) == 1 {
			dir = args[0]
		}
		if st, err := os.Stat(dir); err != nil || !st.IsDir() {
			return nil, &ExitError{Code: ExitUsage, Err: fmt.Errorf("%s is not a directory", dir)}
		}
		want, found, err := readPolicyDir(dir, dir == "/etc/mail")
		if err != nil {
			return nil, err
		}
		if mc, err := os.ReadFile(filepath.Join(dir, "sendmail.mc")); err == nil {
			var local []string
			for _, l := range entryLines(want["local-host-names"]) {
				local = append(local, strings.Fields(l)...)
			}
			masq, notes, err := importSendmailMC(mc, local)
			if err != nil {
				return nil, &ExitError{Code: ExitInvalid, Err: err}
			}
			for _, n := range notes {
				fmt.Fprintln(g.errOut, "note: "+n)
			}
			if masq != "" {
				want[policy.KeyMasquerade] = []byte(masq)
				found = append(found, filepath.Join(dir, "sendmail.mc"))
			}
		}
		if b, ok := want[policy.KeyGenericstable]; ok {
			want[policy.KeyGenericstable] = []byte(importGenericstable(b))
		}
		if len(found) == 0 {
			return nil, &ExitError{Code: ExitUsage, Err: fmt.Errorf("no sendmail map sources (%s) in %s", strings.Join(PolicyKeys[:5], ", "), dir)}
		}
		fmt.Fprintf(g.errOut, "importing %s\n", strings.Join(found, ", "))
		return func(files map[string][]byte) error {
			maps.Copy(files, want)
			return nil
		}, nil
	})
}
