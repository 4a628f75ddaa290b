// Package docs checks that what the user documentation (README.md,
// CHANGELOG.md, docs/*.md, deploy/README.md, charts/mailfwd/README.md)
// tells a new user to run, write or open exists (issue 21: "no step that
// refers to something that does not exist"):
//
//   - every relative link, and its #anchor, resolves inside the repository;
//   - every `make TARGET` is a Makefile target;
//   - every mailfwd-ingress, mailfwd-worker and mailfwd-sendmail command
//     line in a shell block parses with the binary's own flags (a complete
//     daemon command line also passes its validation); mailfwdctl's are
//     checked by pkg/ctl's TestDocExamplesParse;
//   - every `name = value` configuration example is read by the loader of
//     a daemon's --config, mailfwd-sendmail's settings file or the policy's
//     settings key (unknown names refused);
//   - every MAILFWD_* variable is one a binary reads;
//   - every repository path (deploy/systemd/…, charts/mailfwd/examples/…)
//     exists;
//   - every chart value a doc sets or names is in values.yaml, every helm
//     command renders with exactly the values it shows, and every Secret or
//     ConfigMap the docs tell a user to create, or the chart mounts, is one
//     the chart or deploy/quickstart makes, or is optional.
//
// TestDocChecksCatchPlants runs each check on a broken example, so none of
// them can pass by finding nothing.
package docs

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"unicode"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"mvdan.cc/sh/v3/syntax"
	"sigs.k8s.io/yaml"

	"github.com/mailfwd/mailfwd/pkg/config"
	"github.com/mailfwd/mailfwd/pkg/ctl"
	"github.com/mailfwd/mailfwd/pkg/daemon"
	"github.com/mailfwd/mailfwd/pkg/policy"
	"github.com/mailfwd/mailfwd/pkg/submit"
)

// root is the repository, from this package's directory.
const root = "../.."

// doc is one Markdown file: its fenced code blocks and the lines outside them.
type doc struct {
	path   string // repository-relative
	blocks []block
	prose  []line
}

type block struct {
	lang  string
	start int // line number of the first line inside the fence
	lines []string
}

type line struct {
	n    int
	text string
}

func parseDoc(p string, b []byte) doc {
	d := doc{path: p}
	var cur *block
	for i, l := range strings.Split(string(b), "\n") {
		t := strings.TrimSpace(l)
		if strings.HasPrefix(t, "```") {
			if cur == nil {
				cur = &block{lang: strings.TrimPrefix(t, "```"), start: i + 2}
			} else {
				d.blocks = append(d.blocks, *cur)
				cur = nil
			}
			continue
		}
		if cur != nil {
			cur.lines = append(cur.lines, l)
		} else {
			d.prose = append(d.prose, line{i + 1, l})
		}
	}
	return d
}

// userDocs reads the user documentation.
func userDocs(t *testing.T) []doc {
	t.Helper()
	files := []string{"README.md", "CHANGELOG.md", "deploy/README.md", "charts/mailfwd/README.md"}
	more, _ := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	for _, m := range more {
		files = append(files, "docs/"+filepath.Base(m))
	}
	var docs []doc
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join(root, f))
		if err != nil {
			t.Fatal(err)
		}
		docs = append(docs, parseDoc(f, b))
	}
	if len(docs) < 10 {
		t.Fatalf("found only %d docs", len(docs))
	}
	return docs
}

var inlineCode = regexp.MustCompile("`([^`]+)`")

// spans are the inline code spans of the prose, with the text before each.
type span struct {
	n            int
	text, before string
}

func (d doc) spans() []span {
	var out []span
	for _, l := range d.prose {
		for _, m := range inlineCode.FindAllStringSubmatchIndex(l.text, -1) {
			out = append(out, span{l.n, l.text[m[2]:m[3]], l.text[:m[0]]})
		}
	}
	return out
}

// ---- links ----

var mdLink = regexp.MustCompile(`\]\(([^)\s]+)\)`)

// slug is GitHub's anchor for a heading.
func slug(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(strings.TrimSpace(heading)) {
		switch {
		case r == ' ':
			b.WriteRune('-')
		case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsNumber(r):
			b.WriteRune(r)
		}
	}
	return b.String()
}

// anchors lists a Markdown file's heading anchors.
func anchors(d doc) map[string]bool {
	out := map[string]bool{}
	for _, l := range d.prose {
		if h := strings.TrimLeft(l.text, "#"); h != l.text && strings.HasPrefix(h, " ") {
			s := slug(h)
			for i := 1; out[s]; i++ { // GitHub numbers repeated headings
				if !out[fmt.Sprintf("%s-%d", s, i)] {
					s = fmt.Sprintf("%s-%d", s, i)
					break
				}
			}
			out[s] = true
		}
	}
	return out
}

// checkLinks: every relative link names a file or directory of the
// repository, and its anchor a heading there.
func checkLinks(d doc, read func(string) ([]byte, error)) []string {
	var probs []string
	for _, l := range d.prose {
		text := inlineCode.ReplaceAllString(l.text, "")
		for _, m := range mdLink.FindAllStringSubmatch(text, -1) {
			target := m[1]
			if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
				continue
			}
			file, anchor, _ := strings.Cut(target, "#")
			rel := d.path
			if file != "" {
				rel = path.Join(path.Dir(d.path), file)
				if strings.HasPrefix(rel, "../") || rel == ".." {
					probs = append(probs, fmt.Sprintf("%s:%d: link %s leaves the repository", d.path, l.n, target))
					continue
				}
			}
			b, err := read(rel)
			if err != nil && !errors.Is(err, errIsDir) {
				probs = append(probs, fmt.Sprintf("%s:%d: link %s: %s does not exist", d.path, l.n, target, rel))
				continue
			}
			if anchor != "" && !anchors(parseDoc(rel, b))[anchor] {
				probs = append(probs, fmt.Sprintf("%s:%d: link %s: %s has no heading #%s", d.path, l.n, target, rel, anchor))
			}
		}
	}
	return probs
}

var errIsDir = errors.New("a directory")

// readRepo reads a repository file (errIsDir for a directory).
func readRepo(rel string) ([]byte, error) {
	p := filepath.Join(root, filepath.FromSlash(rel))
	if st, err := os.Stat(p); err == nil && st.IsDir() {
		return nil, errIsDir
	}
	return os.ReadFile(p)
}

// ---- shell blocks ----

// call is one simple command of a shell block.
type call struct {
	n    int
	args []string
	dyn  bool              // some word has an expansion ($V, $(…))
	env  map[string]string // MAILFWD_* exported earlier in the block
	out  string            // the file its output is written to (> FILE)
}

// calls parses the shell blocks (sh, bash, shell; "$ "-prompted lines of
// others) and returns their simple commands.
func (d doc) calls() ([]call, []string) {
	var out []call
	var probs []string
	for _, b := range d.blocks {
		var src []string
		switch b.lang {
		case "sh", "bash", "shell", "console":
			src = b.lines
		case "", "text":
			for _, l := range b.lines {
				if s, ok := strings.CutPrefix(strings.TrimSpace(l), "$ "); ok {
					src = append(src, s)
				} else {
					src = append(src, "")
				}
			}
		default:
			continue
		}
		for i, l := range src {
			src[i] = strings.TrimPrefix(l, "$ ")
		}
		f, err := syntax.NewParser().Parse(strings.NewReader(strings.Join(src, "\n")), d.path)
		if err != nil {
			probs = append(probs, fmt.Sprintf("%s:%d: a shell block that does not parse: %v", d.path, b.start, err))
			continue
		}
		env := map[string]string{}
		outs := map[*syntax.CallExpr]string{}
		syntax.Walk(f, func(n syntax.Node) bool {
			switch x := n.(type) {
			case *syntax.Stmt:
				if ce, ok := x.Cmd.(*syntax.CallExpr); ok {
					for _, r := range x.Redirs {
						if r.Op == syntax.RdrOut && r.Word != nil {
							outs[ce], _ = word(r.Word)
						}
					}
				}
			case *syntax.DeclClause:
				if x.Variant != nil && x.Variant.Value == "export" {
					for _, a := range x.Args {
						if a.Name != nil && a.Value != nil {
							env[a.Name.Value], _ = word(a.Value)
						}
					}
				}
			case *syntax.CallExpr:
				c := call{n: b.start + int(x.Pos().Line()) - 1, env: maps.Clone(env), out: outs[x]}
				for _, a := range x.Assigns {
					if a.Name != nil && a.Value != nil {
						c.env[a.Name.Value], _ = word(a.Value)
					}
				}
				for _, w := range x.Args {
					s, ok := word(w)
					c.args = append(c.args, s)
					c.dyn = c.dyn || !ok
				}
				if len(c.args) > 0 {
					out = append(out, c)
				}
			}
			return true
		})
	}
	return out, probs
}

// word is a shell word's text; false when it has expansions (shown as $X).
func word(w *syntax.Word) (string, bool) {
	var b strings.Builder
	ok := true
	var parts func([]syntax.WordPart)
	parts = func(ps []syntax.WordPart) {
		for _, p := range ps {
			switch x := p.(type) {
			case *syntax.Lit:
				b.WriteString(x.Value)
			case *syntax.SglQuoted:
				b.WriteString(x.Value)
			case *syntax.DblQuoted:
				parts(x.Parts)
			default:
				ok = false
				b.WriteString("$X")
			}
		}
	}
	parts(w.Parts)
	return b.String(), ok
}

// program names the mailfwd binary a command runs (cmd/ingress, …), or the
// command's base name; sudo and `go run ./cmd/X` are seen through.
func program(args []string) (string, []string) {
	for len(args) > 0 && args[0] == "sudo" {
		args = args[1:]
		for len(args) > 1 && strings.HasPrefix(args[0], "-") {
			if args[0] == "-u" || args[0] == "-g" {
				args = args[1:]
			}
			args = args[1:]
		}
	}
	if len(args) == 0 {
		return "", nil
	}
	if len(args) >= 3 && args[0] == "go" && args[1] == "run" && strings.HasPrefix(args[2], "./cmd/") {
		return strings.TrimPrefix(args[2], "./"), args[3:]
	}
	switch base := path.Base(args[0]); base {
	case "mailfwd-ingress":
		return "cmd/ingress", args[1:]
	case "mailfwd-worker":
		return "cmd/worker", args[1:]
	case "mailfwd-sendmail", "sendmail":
		return "cmd/sendmail", args[1:]
	case "mailfwdctl":
		return "cmd/ctl", args[1:]
	default:
		return base, args[1:]
	}
}

func elided(args []string) bool {
	return slices.ContainsFunc(args, func(a string) bool { return strings.Contains(a, "…") })
}

// daemonFlags is a daemon's flag set as daemon.Main makes it, and its
// validation.
func daemonFlags(prog string) (*flag.FlagSet, func() error) {
	fs := flag.NewFlagSet(prog, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var validate func() error
	switch prog {
	case "cmd/ingress":
		var o daemon.Ingress
		o.Register(fs)
		validate = o.Validate
	case "cmd/worker":
		var o daemon.Worker
		o.Register(fs)
		validate = o.Validate
	default:
		return nil, nil
	}
	fs.String(config.ConfigFlag, "", "")
	return fs, validate
}

// checkCommands: the daemons' and mailfwd-sendmail's command lines parse;
// a complete daemon command line (nothing elided) also validates, with the
// MAILFWD_* variables its block exports.
func checkCommands(d doc) []string {
	calls, probs := d.calls()
	for _, c := range calls {
		prog, args := program(c.args)
		at := fmt.Sprintf("%s:%d: `%s`", d.path, c.n, strings.Join(c.args, " "))
		switch prog {
		case "cmd/ingress", "cmd/worker":
			fs, validate := daemonFlags(prog)
			if c.dyn || elided(args) {
				for _, a := range args {
					if name, ok := strings.CutPrefix(a, "-"); ok {
						name, _, _ = strings.Cut(strings.TrimPrefix(name, "-"), "=")
						if fs.Lookup(name) == nil {
							probs = append(probs, fmt.Sprintf("%s: no flag --%s", at, name))
						}
					}
				}
				continue
			}
			// The docs' /etc/mailfwd/X.conf is deploy/systemd/X.conf installed.
			for i := range args {
				if i > 0 && strings.TrimLeft(args[i-1], "-") == config.ConfigFlag {
					if _, err := os.Stat(args[i]); err != nil {
						args[i] = filepath.Join(root, "deploy", "systemd", filepath.Base(args[i]))
					}
				}
			}
			if err := config.Parse(fs, args, func(k string) string { return c.env[k] }); err != nil {
				probs = append(probs, fmt.Sprintf("%s: %v", at, err))
				continue
			}
			if err := withoutMissingFiles(validate()); err != nil {
				probs = append(probs, fmt.Sprintf("%s: %v", at, err))
			}
		case "cmd/sendmail":
			if c.dyn || elided(args) {
				continue
			}
			inv, err := submit.Parse(path.Base(c.args[0]), args)
			if err != nil {
				probs = append(probs, fmt.Sprintf("%s: %v", at, err))
				continue
			}
			var conf strings.Builder
			for _, kv := range inv.Settings {
				fmt.Fprintf(&conf, "%s = %s\n", kv[0], kv[1])
			}
			if err := sendmailSettings(conf.String()); err != nil {
				probs = append(probs, fmt.Sprintf("%s: %v", at, err))
			}
		}
	}
	return probs
}

// withoutMissingFiles drops, from a validation's joined errors, those of
// files the example names but this machine lacks (/etc/mailfwd/ca.pem).
func withoutMissingFiles(err error) error {
	if err == nil {
		return nil
	}
	var keep []error
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		for _, e := range j.Unwrap() {
			if e = withoutMissingFiles(e); e != nil {
				keep = append(keep, e)
			}
		}
		return errors.Join(keep...)
	}
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// sendmailSettings loads mailfwd-sendmail settings (`key = value` lines).
func sendmailSettings(text string) error {
	f, err := os.CreateTemp("", "sendmail-*.conf")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	if _, err := f.WriteString(text); err != nil {
		return err
	}
	f.Close()
	c := submit.DefaultConfig()
	return c.LoadFile(f.Name())
}

// ---- configuration examples ----

var confLine = regexp.MustCompile(`^[a-z][a-z0-9_-]*\s+=\s+\S`)

// checkConfigBlocks: a code block of only `name = value` lines is read by
// one of the loaders of such files: a daemon's --config, mailfwd-sendmail's
// settings file, the policy's settings key.
func checkConfigBlocks(d doc) []string {
	var probs []string
	for _, b := range d.blocks {
		if b.lang != "" && b.lang != "ini" {
			continue
		}
		n := 0
		for _, l := range b.lines {
			t := strings.TrimSpace(l)
			if t == "" || strings.HasPrefix(t, "#") {
				continue
			}
			if !confLine.MatchString(t) {
				n = -1
				break
			}
			n++
		}
		if n <= 0 {
			continue
		}
		text := strings.Join(b.lines, "\n") + "\n"
		var errs []string
		for _, prog := range []string{"cmd/ingress", "cmd/worker"} {
			fs, _ := daemonFlags(prog)
			err := config.ParseFile(strings.NewReader(text), fs.Set)
			if err == nil {
				errs = nil
				break
			}
			errs = append(errs, fmt.Sprintf("%s --config: %v", prog, err))
		}
		if errs == nil {
			continue
		}
		if err := sendmailSettings(text); err == nil {
			continue
		} else {
			errs = append(errs, fmt.Sprintf("sendmail settings: %v", err))
		}
		if _, err := policy.Parse(map[string][]byte{"settings": []byte(text)}); err == nil {
			continue
		} else {
			errs = append(errs, fmt.Sprintf("policy settings: %v", err))
		}
		probs = append(probs, fmt.Sprintf("%s:%d: a configuration example no loader reads: %s", d.path, b.start, strings.Join(errs, "; ")))
	}
	return probs
}

// checkWrittenConfigs: a settings file a command writes (printf '…' >
// /etc/mailfwd/sendmail.conf) is read by its loader.
func checkWrittenConfigs(d doc) []string {
	var probs []string
	calls, _ := d.calls()
	for _, c := range calls {
		if c.args[0] != "printf" || len(c.args) < 2 || c.dyn || !strings.HasSuffix(c.out, ".conf") {
			continue
		}
		text := strings.ReplaceAll(c.args[1], `\n`, "\n")
		var err error
		switch path.Base(c.out) {
		case "sendmail.conf":
			err = sendmailSettings(text)
		case "ingress.conf", "worker.conf":
			fs, _ := daemonFlags("cmd/" + strings.TrimSuffix(path.Base(c.out), ".conf"))
			err = config.ParseFile(strings.NewReader(text), fs.Set)
		default:
			continue
		}
		if err != nil {
			probs = append(probs, fmt.Sprintf("%s:%d: the %s it writes: %v", d.path, c.n, c.out, err))
		}
	}
	return probs
}

// ---- make targets ----

var makeTarget = regexp.MustCompile(`(?m)^([A-Za-z0-9_-]+):`)

func makeTargets(t *testing.T) map[string]bool {
	b, err := os.ReadFile(filepath.Join(root, "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, m := range makeTarget.FindAllStringSubmatch(string(b), -1) {
		out[m[1]] = true
	}
	if !out["test"] || !out["release"] {
		t.Fatalf("Makefile targets not found: %v", out)
	}
	return out
}

// checkMake: every `make X` (shell blocks, inline code) is a target.
func checkMake(d doc, targets map[string]bool) []string {
	var probs []string
	check := func(n int, args []string) {
		for _, a := range args {
			if strings.Contains(a, "=") || strings.HasPrefix(a, "-") || strings.ContainsAny(a, "…$<") {
				continue
			}
			if !targets[a] {
				probs = append(probs, fmt.Sprintf("%s:%d: `make %s`: no such target in the Makefile", d.path, n, a))
			}
		}
	}
	calls, _ := d.calls()
	for _, c := range calls {
		if c.args[0] == "make" {
			check(c.n, c.args[1:])
		}
	}
	for _, s := range d.spans() {
		if rest, ok := strings.CutPrefix(s.text, "make "); ok {
			check(s.n, strings.Fields(rest))
		}
	}
	return probs
}

// ---- environment ----

var envName = regexp.MustCompile(`MAILFWD_[A-Z0-9_]*[A-Z0-9]`)

// knownEnv: what the binaries read: MAILFWD_<FLAG> of every daemon flag,
// mailfwd-sendmail's MAILFWD_SENDMAIL_<KEY>, and every name the code, the
// Makefile, the scripts or the chart spell out.
func knownEnv(t *testing.T) func(string) bool {
	spelled := map[string]bool{}
	err := filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if e.IsDir() {
			if rel == "dist" || rel == "var" || rel == ".git" || rel == "third_party" || rel == filepath.Join("tests", "docs") {
				return filepath.SkipDir
			}
			return nil
		}
		if strings.HasSuffix(p, ".md") {
			return nil
		}
		ext := filepath.Ext(p)
		if ext != ".go" && ext != ".sh" && ext != ".yaml" && ext != ".tpl" && filepath.Base(p) != "Makefile" {
			return nil
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for _, m := range envName.FindAll(b, -1) {
			spelled[string(m)] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, prog := range []string{"cmd/ingress", "cmd/worker"} {
		fs, _ := daemonFlags(prog)
		fs.VisitAll(func(f *flag.Flag) { spelled[config.EnvName(f.Name)] = true })
	}
	return func(name string) bool {
		if spelled[name] {
			return true
		}
		// mailfwd-sendmail reads it when its setting changes, or is refused.
		c := submit.DefaultConfig()
		err := c.LoadEnv(func(k string) string {
			if k == name {
				return "mail.example.com:25"
			}
			return ""
		})
		return err != nil || !reflect.DeepEqual(c, submit.DefaultConfig())
	}
}

// checkEnv: every MAILFWD_* variable a doc names is one that is read.
func checkEnv(d doc, known func(string) bool) []string {
	var probs []string
	seen := map[string]bool{}
	look := func(n int, text string) {
		for _, m := range envName.FindAllString(text, -1) {
			if !seen[m] && !known(m) {
				probs = append(probs, fmt.Sprintf("%s:%d: %s: no binary reads this variable", d.path, n, m))
			}
			seen[m] = true
		}
	}
	for _, l := range d.prose {
		look(l.n, l.text)
	}
	for _, b := range d.blocks {
		for i, l := range b.lines {
			look(b.start+i, l)
		}
	}
	return probs
}

// ---- repository paths ----

var repoPath = regexp.MustCompile(`^(?:\./)?((?:cmd|pkg|docs|deploy|charts|tests|scripts|bench|third_party)/[A-Za-z0-9_.*/-]*)`)

// checkPaths: every repository path a doc names (deploy/systemd/…,
// charts/mailfwd/examples/keda.yaml, ./cmd/ctl) exists; * globs must match.
func checkPaths(d doc) []string {
	var probs []string
	check := func(n int, tok string) {
		if strings.ContainsAny(tok, "<>{}$…") || strings.Contains(tok, "x.y.z") {
			return
		}
		m := repoPath.FindStringSubmatch(tok)
		if m == nil {
			return
		}
		p := strings.TrimRight(m[1], ".")
		// Root-relative, or (deploy/README.md's quickstart/…) beside the doc.
		matches, _ := filepath.Glob(filepath.Join(root, filepath.FromSlash(p)))
		beside, _ := filepath.Glob(filepath.Join(root, filepath.FromSlash(path.Dir(d.path)), filepath.FromSlash(p)))
		if len(matches)+len(beside) == 0 {
			probs = append(probs, fmt.Sprintf("%s:%d: %s does not exist in the repository", d.path, n, p))
		}
	}
	calls, _ := d.calls()
	for _, c := range calls {
		for _, a := range c.args {
			_, v, ok := strings.Cut(a, "=")
			if !ok {
				v = a
			}
			check(c.n, v)
		}
	}
	for _, s := range d.spans() {
		for _, tok := range strings.Fields(s.text) {
			check(s.n, strings.Trim(tok, "()[],;:'\""))
		}
	}
	// A file named in plain prose ("see docs/benchmarks.md").
	for _, l := range d.prose {
		text := mdLink.ReplaceAllString(inlineCode.ReplaceAllString(l.text, ""), "")
		for _, m := range proseFile.FindAllString(text, -1) {
			check(l.n, m)
		}
	}
	return probs
}

var proseFile = regexp.MustCompile(`\b(?:cmd|pkg|docs|deploy|charts|tests|scripts|bench)/[A-Za-z0-9_./-]+\.(?:md|go|sh|yaml|json)\b`)

// ---- flags named in prose ----

// flagSets knows the flags of mailfwd's binaries: a daemon's, any
// mailfwdctl command's, and mailfwd-sendmail's --key=value settings.
type flagSets struct {
	daemon map[string]map[string]bool // cmd/ingress, cmd/worker → names
	ctl    map[string]bool
}

func newFlagSets() flagSets {
	f := flagSets{daemon: map[string]map[string]bool{}, ctl: map[string]bool{"help": true}}
	for _, prog := range []string{"cmd/ingress", "cmd/worker"} {
		fs, _ := daemonFlags(prog)
		f.daemon[prog] = map[string]bool{"help": true}
		fs.VisitAll(func(fl *flag.Flag) { f.daemon[prog][fl.Name] = true })
	}
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		for _, set := range []*pflag.FlagSet{c.Flags(), c.PersistentFlags()} {
			set.VisitAll(func(fl *pflag.Flag) {
				if !fl.Hidden {
					f.ctl[fl.Name] = true
				}
			})
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(ctl.NewRoot(io.Discard, io.Discard))
	return f
}

func (f flagSets) has(prog, name string) bool {
	switch prog {
	case "cmd/ingress", "cmd/worker":
		return f.daemon[prog][name]
	case "cmd/ctl":
		return f.ctl[name]
	case "cmd/sendmail":
		// Its own long options (--version, --help), else a --key=value setting.
		if inv, err := submit.Parse("mailfwd-sendmail", []string{"--" + name}); err == nil && len(inv.Settings) == 0 {
			return true
		}
		err := sendmailSettings(name + " = x\n")
		return err == nil || !strings.Contains(err.Error(), "unknown setting")
	}
	// A flag alone: any of mailfwd's, or the few of other tools the docs
	// name by themselves (helm --set, kubectl --prefix, bench/profiled's
	// --cpuprofile, sendmail's --key=value).
	return f.daemon["cmd/ingress"][name] || f.daemon["cmd/worker"][name] || f.ctl[name] || f.has("cmd/sendmail", name) ||
		slices.Contains([]string{"set", "prefix", "cpuprofile", "key"}, name)
}

var flagName = regexp.MustCompile(`^--([a-z][a-z0-9-]*[a-z0-9])(?:=|$)`)

// checkFlagNames: every --flag named in inline code (`--queue-return`,
// `mailfwdctl queue release --extend 5d`) is one of the binary it goes with,
// or, alone, of one of mailfwd's binaries.
func checkFlagNames(d doc, f flagSets) []string {
	var probs []string
	if d.path == "CHANGELOG.md" {
		return nil // history: it names the flags that were renamed
	}
	for _, s := range d.spans() {
		for _, seg := range strings.Split(s.text, "|") {
			words := strings.Fields(seg)
			if len(words) == 0 {
				continue
			}
			prog := ""
			if !strings.HasPrefix(words[0], "-") {
				if prog, words = program(words); !strings.HasPrefix(prog, "cmd/") {
					continue // another tool's command line
				}
			}
			for _, w := range words {
				m := flagName.FindStringSubmatch(strings.TrimRight(w, ",;:.)"))
				if m != nil && !f.has(prog, m[1]) {
					probs = append(probs, fmt.Sprintf("%s:%d: `%s`: no flag --%s", d.path, s.n, s.text, m[1]))
				}
			}
		}
	}
	return probs
}

// ---- chart values ----

type values map[string]any

func loadValues(t *testing.T) values {
	b, err := os.ReadFile(filepath.Join(root, "charts", "mailfwd", "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var v values
	if err := yaml.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	return v
}

var indexSuffix = regexp.MustCompile(`\[\d+\]$`)

// has reports whether key (a.b.c, a.list[0]) is in values.yaml; below a
// map that is empty by default ({}: labels, thresholds) any key is.
func (v values) has(key string) bool {
	var cur any = map[string]any(v)
	for _, seg := range strings.Split(key, ".") {
		seg = indexSuffix.ReplaceAllString(seg, "")
		m, ok := cur.(map[string]any)
		if !ok {
			return false
		}
		if len(m) == 0 {
			return true
		}
		if cur, ok = m[seg]; !ok {
			return false
		}
	}
	return true
}

// helmSets returns the value keys of a helm command's --set flags.
func helmSets(args []string) (keys []string) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		var v string
		switch {
		case a == "--set" || a == "--set-string" || a == "--set-file" || a == "--set-json":
			if i+1 < len(args) {
				v = args[i+1]
				i++
			}
		case strings.HasPrefix(a, "--set=") || strings.HasPrefix(a, "--set-string="):
			_, v, _ = strings.Cut(a, "=")
		default:
			continue
		}
		depth := 0
		start := 0
		for j := 0; j <= len(v); j++ {
			if j < len(v) && v[j] == '{' {
				depth++
			} else if j < len(v) && v[j] == '}' {
				depth--
			} else if j == len(v) || v[j] == ',' && depth == 0 {
				if k, _, ok := strings.Cut(v[start:j], "="); ok {
					keys = append(keys, k)
				}
				start = j + 1
			}
		}
	}
	return keys
}

// fileName: a file name in inline code (nats.creds, tls.crt), not a value.
var fileName = regexp.MustCompile(`\.(creds|crt|key|pem|conf|yaml|json|md|tgz|tar)$`)

var valueKeySpan = regexp.MustCompile(`^([a-z][A-Za-z0-9]*(?:\.[A-Za-z][A-Za-z0-9-]*)+)(?:=\S*|: .*)?$`)

// chartContext: docs about the chart, where value names appear alone.
func chartContext(d doc, s span) bool {
	switch d.path {
	case "charts/mailfwd/README.md", "docs/kubernetes.md", "deploy/README.md":
		return true
	}
	b := strings.ToLower(s.before)
	if i := strings.LastIndex(b, "chart"); i >= 0 && len(b)-i < 40 {
		return true
	}
	return strings.Contains(s.text, "=")
}

var tableKey = regexp.MustCompile("^\\| `([A-Za-z][A-Za-z0-9.-]*)`")

// checkValues: every chart value a helm command sets, and every value a
// chart doc names in inline code (`ingress.proxyProtocol.from`), is a key
// of values.yaml; every -f file exists.
func checkValues(d doc, v values) []string {
	var probs []string
	calls, _ := d.calls()
	for _, c := range calls {
		if c.args[0] != "helm" || len(c.args) < 2 {
			continue
		}
		for _, k := range helmSets(c.args) {
			if !strings.ContainsAny(k, "…$") && !v.has(k) {
				probs = append(probs, fmt.Sprintf("%s:%d: helm --set %s: no such key in charts/mailfwd/values.yaml", d.path, c.n, k))
			}
		}
	}
	// The chart README's values table: the first column's keys.
	if d.path == "charts/mailfwd/README.md" {
		for _, l := range d.prose {
			m := tableKey.FindStringSubmatch(l.text)
			if m == nil || m[1] == "Key" {
				continue
			}
			if !v.has(m[1]) {
				probs = append(probs, fmt.Sprintf("%s:%d: values table: `%s` is not a key of charts/mailfwd/values.yaml", d.path, l.n, m[1]))
			}
		}
	}
	top := map[string]bool{}
	for k := range v {
		top[k] = true
	}
	for _, s := range d.spans() {
		m := valueKeySpan.FindStringSubmatch(s.text)
		if m == nil || !top[strings.Split(m[1], ".")[0]] || !chartContext(d, s) || fileName.MatchString(m[1]) {
			continue
		}
		if !v.has(m[1]) {
			probs = append(probs, fmt.Sprintf("%s:%d: chart value `%s`: no such key in charts/mailfwd/values.yaml", d.path, s.n, m[1]))
		}
	}
	return probs
}

// ---- the tests ----

func report(t *testing.T, what string, probs []string) {
	t.Helper()
	for _, p := range probs {
		t.Errorf("%s: %s", what, p)
	}
}

func TestDocLinks(t *testing.T) {
	n := 0
	for _, d := range userDocs(t) {
		report(t, "link", checkLinks(d, readRepo))
		for _, l := range d.prose {
			n += len(mdLink.FindAllString(l.text, -1))
		}
	}
	if n < 30 {
		t.Fatalf("found only %d links", n)
	}
}

func TestDocMakeTargets(t *testing.T) {
	targets := makeTargets(t)
	for _, d := range userDocs(t) {
		report(t, "make", checkMake(d, targets))
	}
}

func TestDocCommands(t *testing.T) {
	n := 0
	for _, d := range userDocs(t) {
		report(t, "command", checkCommands(d))
		calls, _ := d.calls()
		for _, c := range calls {
			if p, _ := program(c.args); p == "cmd/ingress" || p == "cmd/worker" || p == "cmd/sendmail" {
				n++
			}
		}
	}
	if n < 5 {
		t.Fatalf("found only %d daemon and sendmail command lines", n)
	}
	t.Logf("%d daemon and sendmail command lines", n)
}

func TestDocConfigExamples(t *testing.T) {
	for _, d := range userDocs(t) {
		report(t, "config", checkConfigBlocks(d))
		report(t, "config", checkWrittenConfigs(d))
	}
}

func TestDocEnvironment(t *testing.T) {
	known := knownEnv(t)
	for _, d := range userDocs(t) {
		report(t, "environment", checkEnv(d, known))
	}
}

func TestDocPaths(t *testing.T) {
	for _, d := range userDocs(t) {
		report(t, "path", checkPaths(d))
	}
}

func TestDocFlagNames(t *testing.T) {
	f := newFlagSets()
	for _, d := range userDocs(t) {
		report(t, "flag", checkFlagNames(d, f))
	}
}

func TestDocChartValues(t *testing.T) {
	v := loadValues(t)
	for _, d := range userDocs(t) {
		report(t, "chart value", checkValues(d, v))
	}
}

// helmBin is the pinned helm (make test sets MAILFWD_HELM_BIN).
func helmBin(t *testing.T) string {
	h := os.Getenv("MAILFWD_HELM_BIN")
	if _, err := os.Stat(h); h == "" || err != nil {
		if os.Getenv("MAILFWD_REQUIRE_KUBE") != "" {
			t.Fatalf("MAILFWD_HELM_BIN=%q: make tools builds it", h)
		}
		t.Skip("MAILFWD_HELM_BIN not set (make test sets it)")
	}
	return h
}

// The values every install needs (the chart refuses to install without them).
var requiredSets = []string{"--set", "hostname=mail.example.com", "--set", "image.registry=registry.example.com/mailfwd"}

var releaseChart = regexp.MustCompile(`^dist/release/([^/]+)/mailfwd-chart-([^/]+)\.tgz$`)

// helmTemplateArgs turns a documented `helm install|upgrade|template` into
// `helm template` of charts/mailfwd with the same values. An upgrade with
// --reuse-values, or an elided command, also gets the install's required
// values; an install must render with exactly what it shows.
func helmTemplateArgs(args []string) ([]string, error) {
	if len(args) < 4 || !slices.Contains([]string{"install", "upgrade", "template"}, args[1]) {
		return nil, nil
	}
	name, chart := args[2], args[3]
	switch m := releaseChart.FindStringSubmatch(chart); {
	case chart == "charts/mailfwd", strings.HasPrefix(chart, "oci://") && strings.HasSuffix(chart, "/mailfwd"):
	case m != nil && m[1] == m[2]:
	case chart == "…":
	default:
		return nil, fmt.Errorf("chart %q is neither charts/mailfwd nor a release's dist/release/V/mailfwd-chart-V.tgz", chart)
	}
	out := []string{"template", name, filepath.Join(root, "charts", "mailfwd")}
	if args[1] == "upgrade" || elided(args) {
		out = append(out, requiredSets...)
	}
	rest := args[4:]
	for i := 0; i < len(rest); i++ {
		switch a := rest[i]; {
		case a == "--reuse-values", a == "…", a == "--version", a == "--wait", a == "--atomic", a == "--create-namespace":
			if a == "--version" {
				i++
			}
		case a == "-f" || a == "--values":
			if i+1 < len(rest) {
				out = append(out, a, filepath.Join(root, rest[i+1]))
				i++
			}
		case a == "--set" || a == "--set-string" || a == "-n" || a == "--namespace":
			if i+1 < len(rest) {
				out = append(out, a, rest[i+1])
				i++
			}
		default:
			out = append(out, a)
		}
	}
	return out, nil
}

// Every documented helm install/upgrade renders with the values it shows.
func TestDocHelmCommandsRender(t *testing.T) {
	helm := helmBin(t)
	n := 0
	for _, d := range userDocs(t) {
		calls, _ := d.calls()
		for _, c := range calls {
			if c.args[0] != "helm" || c.dyn {
				continue
			}
			args, err := helmTemplateArgs(c.args)
			if err != nil {
				t.Errorf("%s:%d: %v", d.path, c.n, err)
			}
			if args == nil {
				continue
			}
			n++
			if out, err := exec.Command(helm, args...).CombinedOutput(); err != nil {
				t.Errorf("%s:%d: `%s` does not render (helm %s): %v\n%s", d.path, c.n, strings.Join(c.args, " "), strings.Join(args, " "), err, out)
			}
		}
	}
	if n < 3 {
		t.Fatalf("found only %d helm commands", n)
	}
}

// renderedNames lists the Secrets and ConfigMaps a rendered chart (and
// deploy/quickstart) defines, and those its pods mount or read (name →
// optional).
func renderedNames(t *testing.T, manifests ...[]byte) (defined map[string]bool, used map[string]bool) {
	defined, used = map[string]bool{}, map[string]bool{}
	for _, m := range manifests {
		for _, part := range bytes.Split(m, []byte("\n---")) {
			var obj map[string]any
			if err := yaml.Unmarshal(part, &obj); err != nil {
				t.Fatalf("rendered YAML: %v\n%s", err, part)
			}
			if obj == nil {
				continue
			}
			if k, _ := obj["kind"].(string); k == "Secret" || k == "ConfigMap" {
				md, _ := obj["metadata"].(map[string]any)
				name, _ := md["name"].(string)
				defined[k+"/"+name] = true
			}
			walkRefs(obj, used)
		}
	}
	return defined, used
}

// walkRefs records Secret/ConfigMap references: secretKeyRef,
// configMapKeyRef, secret/configMap volumes and projections, secretName.
func walkRefs(v any, used map[string]bool) {
	switch x := v.(type) {
	case map[string]any:
		for k, c := range x {
			ref, _ := c.(map[string]any)
			opt, _ := ref["optional"].(bool)
			switch k {
			case "secretKeyRef", "secret":
				if n, ok := ref["name"].(string); ok {
					used["Secret/"+n] = used["Secret/"+n] || !opt
				}
				if n, ok := ref["secretName"].(string); ok {
					used["Secret/"+n] = used["Secret/"+n] || !opt
				}
			case "configMapKeyRef", "configMap":
				if n, ok := ref["name"].(string); ok {
					used["ConfigMap/"+n] = used["ConfigMap/"+n] || !opt
				}
			}
			walkRefs(c, used)
		}
	case []any:
		for _, c := range x {
			walkRefs(c, used)
		}
	}
}

var kubectlCreate = regexp.MustCompile(`kubectl .*create (secret|configmap) (?:generic |tls )?([a-z0-9][a-z0-9.-]*)`)

// The chart as the docs install it (release mailfwd, the required values):
// every Secret and ConfigMap its pods need is made by the chart or by
// deploy/quickstart (or is optional), and every one the docs tell a user to
// create with kubectl is one the chart mounts.
func TestDocSecretNames(t *testing.T) {
	used := chartSecretRefs(t, helmBin(t), requiredSets...)
	n := 0
	for _, d := range userDocs(t) {
		probs, found := checkKubectlCreate(d, used)
		n += found
		report(t, "secret", probs)
	}
	if n == 0 {
		t.Fatal("found no kubectl create secret in the docs")
	}
}

// chartSecretRefs renders the chart as the docs install it (release
// mailfwd, namespace mail) with sets, checks that every Secret and
// ConfigMap its pods need is made by it or by deploy/quickstart (or is
// optional), and returns those it references.
func chartSecretRefs(t *testing.T, helm string, sets ...string) map[string]bool {
	t.Helper()
	out, err := exec.Command(helm, append([]string{"template", "mailfwd", filepath.Join(root, "charts", "mailfwd"), "-n", "mail"}, sets...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("helm template: %v\n%s", err, out)
	}
	manifests := [][]byte{out}
	qs, _ := filepath.Glob(filepath.Join(root, "deploy", "quickstart", "*.yaml"))
	for _, f := range qs {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		manifests = append(manifests, b)
	}
	defined, used := renderedNames(t, manifests...)
	if len(used) < 3 {
		t.Fatalf("found only %v referenced by the chart", used)
	}
	for ref, required := range used {
		if required && !defined[ref] {
			t.Errorf("the chart's pods need %s, which neither the chart nor deploy/quickstart makes", ref)
		}
	}
	return used
}

// checkKubectlCreate: a Secret or ConfigMap the docs tell a user to create
// (kubectl create secret generic NAME) is one the chart uses.
func checkKubectlCreate(d doc, used map[string]bool) (probs []string, found int) {
	var texts []line
	for _, b := range d.blocks {
		for i, l := range b.lines {
			texts = append(texts, line{b.start + i, l})
		}
	}
	for _, s := range d.spans() {
		texts = append(texts, line{s.n, s.text})
	}
	for _, l := range texts {
		for _, m := range kubectlCreate.FindAllStringSubmatch(l.text, -1) {
			found++
			kind := map[string]string{"secret": "Secret", "configmap": "ConfigMap"}[m[1]]
			if _, ok := used[kind+"/"+m[2]]; !ok {
				probs = append(probs, fmt.Sprintf("%s:%d: the docs create %s %s, which the chart (release mailfwd) does not use; it uses %v", d.path, l.n, kind, m[2], slices.Sorted(maps.Keys(used))))
			}
		}
	}
	return probs, found
}

// Each check finds a planted broken example (and passes its fixed twin), so
// none passes by finding nothing.
func TestDocChecksCatchPlants(t *testing.T) {
	targets := makeTargets(t)
	known := knownEnv(t)
	v := loadValues(t)
	flags := newFlagSets()
	for _, tc := range []struct {
		name, broken, fixed string
		check               func(doc) []string
	}{
		{"link to a missing file", "see [x](docs/nosuch.md)", "see [x](docs/releases.md)", func(d doc) []string { return checkLinks(d, readRepo) }},
		{"link out of the repository", "see [x](../shared/DESIGN.md)", "see [x](README.md)", func(d doc) []string { return checkLinks(d, readRepo) }},
		{"link to a missing anchor", "see [x](#no-such-heading)", "see [x](#how-it-keeps-mail)", func(d doc) []string { return checkLinks(d, readRepo) }},
		{"make target", "```sh\nmake relase VERSION=1.0.0\n```", "```sh\nmake release VERSION=1.0.0\n```", func(d doc) []string { return checkMake(d, targets) }},
		{"inline make target", "run `make chart-lnt`", "run `make chart-lint`", func(d doc) []string { return checkMake(d, targets) }},
		{"ingress flag", "```sh\nbin/mailfwd-ingress --nats-url nats://n:4222 \\\n  --blob-store file:///b --max-sesions 5\n```", "```sh\nbin/mailfwd-ingress --nats-url nats://n:4222 \\\n  --blob-store file:///b --max-sessions 5\n```", checkCommands},
		{"elided worker flag", "```sh\nmailfwd-worker … --helo-nam x\n```", "```sh\nmailfwd-worker … --helo-name x\n```", checkCommands},
		{"ingress validation", "```sh\nmailfwd-ingress --blob-store file:///b --policy-dir /p --relay-networks 10.0.0.0/8\n```", "```sh\nmailfwd-ingress --blob-store file:///b --policy-dir /p\n```", checkCommands},
		{"worker validation with the block's environment", "```sh\nexport MAILFWD_BLOB_STORE=file:///b\nmailfwd-worker --helo-name x.example --route 'example.net=bogus:'\n```", "```sh\nexport MAILFWD_BLOB_STORE=file:///b\nmailfwd-worker --helo-name x.example --route 'example.net=smtp:[10.0.0.1]'\n```", checkCommands},
		{"sendmail option", "```sh\n/usr/lib/sendmail -Z x@example.com < f\n```", "```sh\n/usr/lib/sendmail -v x@example.com < f\n```", checkCommands},
		{"sendmail setting", "```sh\nmailfwd-sendmail --srever=h:25 x@example.com\n```", "```sh\nmailfwd-sendmail --server=h:25 x@example.com\n```", checkCommands},
		{"shell that does not parse", "```sh\nmailfwd-worker --helo-name 'x\n```", "```sh\nmailfwd-worker --helo-name 'x'\n```", func(d doc) []string { _, p := d.calls(); return p }},
		{"configuration key", "```\nhostname = a.example\nmax-sesions = 5\n```", "```\nhostname = a.example\nmax-sessions = 5\n```", checkConfigBlocks},
		{"settings file written by printf", "```sh\nprintf 'server = a:25\\nqualify-domian = example.com\\n' > /etc/mailfwd/sendmail.conf\n```", "```sh\nprintf 'server = a:25\\nqualify-domain = example.com\\n' > /etc/mailfwd/sendmail.conf\n```", checkWrittenConfigs},
		{"configuration value", "```\nread-timeout = 5x\n```", "```\nread-timeout = 5d\n```", checkConfigBlocks},
		{"environment variable", "set MAILFWD_" + "NATS_URLS", "set MAILFWD_NATS_URL or MAILFWD_SENDMAIL_QUALIFY_DOMAIN", func(d doc) []string { return checkEnv(d, known) }},
		{"flag alone", "worker `--queue-retrun` (5d)", "worker `--queue-return` (5d)", func(d doc) []string { return checkFlagNames(d, flags) }},
		{"flag of a command", "`mailfwdctl queue release --extnd 5d`", "`mailfwdctl queue release --extend 5d`", func(d doc) []string { return checkFlagNames(d, flags) }},
		{"flag of the daemon it goes with", "`mailfwd-ingress --helo-name x`", "`mailfwd-worker --helo-name x`", func(d doc) []string { return checkFlagNames(d, flags) }},
		{"sendmail setting", "`mailfwd-sendmail --qualify-domian=example.com`", "`mailfwd-sendmail --qualify-domain=example.com`", func(d doc) []string { return checkFlagNames(d, flags) }},
		{"sendmail long option", "`mailfwd-sendmail --verison`", "`mailfwd-sendmail --version`", func(d doc) []string { return checkFlagNames(d, flags) }},
		{"old hidden flag", "`--dir`", "`--policy-dir`", func(d doc) []string { return checkFlagNames(d, flags) }},
		{"repository path", "```sh\nsudo install -m 0644 deploy/systemd/mailfwd-*.sevice /etc/systemd/system/\n```", "```sh\nsudo install -m 0644 deploy/systemd/mailfwd-*.service /etc/systemd/system/\n```", checkPaths},
		{"inline repository path", "see `charts/mailfwd/examples/kedda.yaml`", "see `charts/mailfwd/examples/keda.yaml`", checkPaths},
		{"repository path in prose", "(see docs/benchmark.md)", "(see docs/benchmarks.md)", checkPaths},
		{"helm --set key", "```sh\nhelm install m charts/mailfwd --set hostname=a.example --set image.regsitry=r\n```", "```sh\nhelm install m charts/mailfwd --set hostname=a.example --set image.registry=r\n```", func(d doc) []string { return checkValues(d, v) }},
		{"chart value named in prose", "(chart: `ingress.proxyProtocol.form`)", "(chart: `ingress.proxyProtocol.from`)", func(d doc) []string { return checkValues(d, v) }},
		{"chart README values table", "| `hostnme` | `\"\"` | x |", "| `hostname` | `\"\"` | x |", func(d doc) []string { d.path = "charts/mailfwd/README.md"; return checkValues(d, v) }},
	} {
		broken := tc.check(parseDoc("README.md", []byte(tc.broken)))
		fixed := tc.check(parseDoc("README.md", []byte(tc.fixed)))
		if len(broken) == 0 {
			t.Errorf("%s: the check finds nothing wrong in %q", tc.name, tc.broken)
		}
		if len(fixed) != 0 {
			t.Errorf("%s: the check refuses the fixed example %q: %v", tc.name, tc.fixed, fixed)
		}
		t.Logf("%s: %v", tc.name, broken)
	}
}

// The helm check refuses a chart that is not the release's, and an install
// without the required values does not render.
func TestDocHelmCheckCatchesPlants(t *testing.T) {
	helm := helmBin(t)
	if _, err := helmTemplateArgs(strings.Fields("helm install mailfwd dist/release/0.2.0/mailfwd-chart-0.3.0.tgz -n mail")); err == nil {
		t.Error("a chart archive of another version than its directory was accepted")
	}
	args, err := helmTemplateArgs(strings.Fields("helm install mailfwd charts/mailfwd -n mail --set image.registry=registry.example.com/mailfwd"))
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(helm, args...).CombinedOutput(); err == nil {
		t.Errorf("an install without hostname rendered:\n%.300s", out)
	}
	used := chartSecretRefs(t, helm, requiredSets...)
	if probs, _ := checkKubectlCreate(parseDoc("README.md", []byte("```sh\nkubectl -n mail create secret generic mailfwd-policy-secrets --from-file=authinfo\n```\n")), used); len(probs) == 0 {
		t.Error("a Secret the chart does not use (mailfwd-policy-secrets) was accepted")
	}
	if probs, _ := checkKubectlCreate(parseDoc("README.md", []byte("`kubectl create secret generic mailfwd-policy-secret --from-file=authinfo`")), used); len(probs) != 0 {
		t.Errorf("the chart's policy Secret was refused: %v", probs)
	}
	// A Secret the pods need that nobody makes.
	_, refs := renderedNames(t, []byte("kind: Pod\nspec:\n  volumes:\n  - secret: {secretName: nosuch}\n"))
	if !refs["Secret/nosuch"] {
		t.Errorf("a required Secret volume was not seen: %v", refs)
	}
}

// The systemd units of the one-machine setup (deploy/systemd, installed as
// docs/one-machine.md says) start: each daemon's ExecStart, with the
// configuration file it names (/etc/mailfwd/X.conf is deploy/systemd/X.conf),
// parses and validates; nats-server's configuration passes `nats-server -t`.
func TestSystemdUnits(t *testing.T) {
	units, _ := filepath.Glob(filepath.Join(root, "deploy", "systemd", "*.service"))
	n := 0
	for _, u := range units {
		b, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(string(b), "\n") {
			cmd, ok := strings.CutPrefix(l, "ExecStart=")
			if !ok {
				continue
			}
			rel := "deploy/systemd/" + filepath.Base(u)
			d := parseDoc(rel, []byte("```sh\n"+cmd+"\n```\n"))
			calls, probs := d.calls()
			report(t, "unit", probs)
			report(t, "unit", checkCommands(d))
			for _, c := range calls {
				n++
				prog, args := program(c.args)
				if prog != "nats-server" {
					continue
				}
				conf := ""
				for i, a := range args {
					if (a == "--config" || a == "-c") && i+1 < len(args) {
						conf = filepath.Join(root, "deploy", "systemd", filepath.Base(args[i+1]))
					}
				}
				if _, err := os.Stat(conf); err != nil {
					t.Errorf("%s: %s: no such configuration in deploy/systemd: %v", rel, cmd, err)
					continue
				}
				bin := os.Getenv("MAILFWD_NATS_SERVER_BIN")
				if bin == "" {
					t.Logf("MAILFWD_NATS_SERVER_BIN not set: %s not checked with nats-server -t", conf)
					continue
				}
				if out, err := exec.Command(bin, "-t", "-c", conf).CombinedOutput(); err != nil {
					t.Errorf("%s: nats-server -t -c %s: %v\n%s", rel, conf, err, out)
				}
			}
		}
	}
	if n < 3 {
		t.Fatalf("found only %d ExecStart lines", n)
	}
	verifyUnits(t, units)
}

// verifyUnits runs `systemd-analyze verify` on the units (their binaries
// replaced by stand-ins), which names every unknown key or bad value.
func verifyUnits(t *testing.T, units []string) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Log("no systemd-analyze: the units' syntax is not verified")
		return
	}
	dir := t.TempDir()
	for _, b := range []string{"mailfwd-ingress", "mailfwd-worker", "nats-server"} {
		if err := os.WriteFile(filepath.Join(dir, b), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	args := []string{"verify"}
	for _, u := range units {
		b, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, filepath.Base(u))
		if err := os.WriteFile(p, bytes.ReplaceAll(b, []byte("/usr/local/bin/"), []byte(dir+"/")), 0o644); err != nil {
			t.Fatal(err)
		}
		args = append(args, p)
	}
	cmd := exec.Command(analyze, args...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Errorf("systemd-analyze verify deploy/systemd/*.service: %v\n%s", err, out)
	}
}

// Every nats-server flag a doc shows (nats-server -js -sd DIR) is one the
// pinned nats-server lists in its -h.
func TestDocNatsServerFlags(t *testing.T) {
	bin := os.Getenv("MAILFWD_NATS_SERVER_BIN")
	if bin == "" {
		t.Skip("MAILFWD_NATS_SERVER_BIN not set (make test sets it)")
	}
	help, _ := exec.Command(bin, "-h").CombinedOutput()
	has := func(flag string) bool {
		return regexp.MustCompile(`(^|[\s,])` + regexp.QuoteMeta(flag) + `([\s,=]|$)`).Match(help)
	}
	if !has("-js") || has("-nosuchflag") {
		t.Fatalf("nats-server -h does not read as expected:\n%s", help)
	}
	n := 0
	for _, d := range userDocs(t) {
		calls, _ := d.calls()
		for _, c := range calls {
			if prog, args := program(c.args); prog == "nats-server" {
				for _, a := range args {
					if strings.HasPrefix(a, "-") {
						n++
						if name, _, _ := strings.Cut(a, "="); !has(name) {
							t.Errorf("%s:%d: nats-server %s: not a flag of nats-server", d.path, c.n, name)
						}
					}
				}
			}
		}
	}
	if n == 0 {
		t.Fatal("found no nats-server flags in the docs")
	}
}
