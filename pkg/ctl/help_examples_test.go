package ctl_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/mailfwd/mailfwd/pkg/ctl"
)

// helpText runs `mailfwdctl PATH… --help` and returns what it printed.
func helpText(t *testing.T, path []string) string {
	t.Helper()
	var out, errOut bytes.Buffer
	code := ctl.Execute(context.Background(), append(append([]string{}, path...), "--help"), &out, &errOut)
	if code != 0 {
		t.Fatalf("mailfwdctl %s --help: exit %d: %s", strings.Join(path, " "), code, errOut.String())
	}
	return out.String()
}

// allCommands lists every command path of the tree, root first.
func allCommands(c *cobra.Command, path []string, visit func([]string, *cobra.Command)) {
	visit(path, c)
	for _, sub := range c.Commands() {
		if sub.Hidden || sub.Name() == "help" || sub.Name() == "completion" {
			continue
		}
		allCommands(sub, append(append([]string{}, path...), sub.Name()), visit)
	}
}

// shellWords splits a command line as sh would for the simple quoting the
// examples use ('…', "…", plain words).
func shellWords(s string) []string {
	var words []string
	var cur strings.Builder
	in := false
	var quote byte
	for i := 0; i < len(s); i++ {
		ch := s[i]
		switch {
		case quote != 0:
			if ch == quote {
				quote = 0
			} else {
				cur.WriteByte(ch)
			}
		case ch == '\'' || ch == '"':
			quote, in = ch, true
		case ch == ' ' || ch == '\t':
			if in {
				words = append(words, cur.String())
				cur.Reset()
				in = false
			}
		default:
			cur.WriteByte(ch)
			in = true
		}
	}
	if in {
		words = append(words, cur.String())
	}
	return words
}

var exampleComment = regexp.MustCompile(`\s+(#.*|\(.*\))$`)

// examplesIn finds the mailfwdctl invocations a help text shows: every
// "mailfwdctl SUBCOMMAND …" up to the end of its line, less a trailing
// "# comment" or "(aside)".
func examplesIn(text string) [][]string {
	var out [][]string
	inUsage := false
	for _, line := range strings.Split(text, "\n") {
		// Cobra's own "Usage:" block and "Use "mailfwdctl … --help"" line are
		// synopses, not examples (the usage-line values are checked apart).
		switch {
		case line == "Usage:":
			inUsage = true
			continue
		case inUsage && strings.TrimSpace(line) == "":
			inUsage = false
			continue
		case inUsage || strings.HasPrefix(line, "Use \"mailfwdctl"):
			continue
		}
		i := strings.Index(line, "mailfwdctl ")
		// A name quoted in prose ("mailfwdctl bootstrap" makes them) is not an example.
		if i < 0 || i > 0 && strings.ContainsRune("\"'`", rune(line[i-1])) {
			continue
		}
		cmdline := exampleComment.ReplaceAllString(strings.TrimSpace(line[i+len("mailfwdctl "):]), "")
		// Stop at a pipe or a sentence end that follows the command.
		if j := strings.Index(cmdline, " | "); j >= 0 {
			cmdline = cmdline[:j]
		}
		words := shellWords(cmdline)
		if len(words) == 0 || strings.HasPrefix(words[0], "[") || strings.HasPrefix(words[0], "-") && len(words) == 1 {
			continue
		}
		out = append(out, words)
	}
	return out
}

// parseOnly takes args through everything mailfwdctl checks before a command
// runs (command lookup, flag parsing, argument and flag-group validation),
// without running it.
func parseOnly(root *cobra.Command, args []string) error {
	c, rest, err := root.Find(args)
	if err != nil {
		return err
	}
	if err := c.ParseFlags(rest); err != nil {
		return err
	}
	if err := c.ValidateArgs(c.Flags().Args()); err != nil {
		return err
	}
	if err := c.ValidateRequiredFlags(); err != nil {
		return err
	}
	return c.ValidateFlagGroups()
}

// Every example mailfwdctl's help shows (Long texts, Examples, and the
// values in a usage line's [--flag VALUE]) is accepted by its parser: an
// advertised example can no longer be refused (issue 21: `queue release
// --extend 5d` from `queue --help` failed with `time: unknown unit "d"`).
func TestHelpExamplesParse(t *testing.T) {
	tree := ctl.NewRoot(os.Stdout, os.Stderr)
	usageValue := regexp.MustCompile(`\[(--[a-z-]+) ([^\]A-Z|…]+)\]`)
	n := 0
	allCommands(tree, nil, func(path []string, c *cobra.Command) {
		text := helpText(t, path)
		for _, ex := range examplesIn(text) {
			n++
			if err := parseOnly(ctl.NewRoot(os.Stdout, os.Stderr), ex); err != nil {
				t.Errorf("`mailfwdctl %s` (shown in `mailfwdctl %s --help`) is refused: %v", strings.Join(ex, " "), strings.Join(path, " "), err)
			}
		}
		// Usage lines: "release --domain DOMAIN [--extend 5d]" shows 5d as a value.
		for _, m := range usageValue.FindAllStringSubmatch(c.Use, -1) {
			n++
			f := c.Flags().Lookup(strings.TrimPrefix(m[1], "--"))
			if f == nil {
				f = c.InheritedFlags().Lookup(strings.TrimPrefix(m[1], "--"))
			}
			if f == nil {
				t.Errorf("usage %q of mailfwdctl %s: no flag %s", c.Use, strings.Join(path, " "), m[1])
				continue
			}
			if err := f.Value.Set(m[2]); err != nil {
				t.Errorf("usage %q of mailfwdctl %s: %s %s is refused: %v", c.Use, strings.Join(path, " "), m[1], m[2], err)
			}
		}
		// A flag's usage that says "e.g. VALUE" shows VALUE as accepted.
		eg := regexp.MustCompile(`e\.g\. ([^\s,;)]+)`)
		c.LocalFlags().VisitAll(func(f *pflag.Flag) {
			if f.Value.Type() == "string" || f.Value.Type() == "stringSlice" || f.Value.Type() == "stringArray" {
				return
			}
			for _, m := range eg.FindAllStringSubmatch(f.Usage, -1) {
				n++
				if err := f.Value.Set(m[1]); err != nil {
					t.Errorf("flag --%s of mailfwdctl %s says e.g. %s, which it refuses: %v", f.Name, strings.Join(path, " "), m[1], err)
				}
			}
		})
	})
	if n < 20 {
		t.Fatalf("found only %d examples in the help texts; the extraction is broken", n)
	}
	t.Logf("%d examples checked", n)
}

// A mistyped subcommand is a usage error with a suggestion, as a mistyped
// top-level command already is (issue 21: `queue lst` printed help, exit 0).
func TestMistypedSubcommand(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		suggest string
	}{
		{[]string{"queue", "lst"}, "list"},
		{[]string{"policy", "gte"}, "get"},
		{[]string{"quue"}, "queue"},
		{[]string{"users", "ad", "x"}, "add"},
	} {
		r := runCtl(t, tc.args...)
		if r.code != ctl.ExitUsage {
			t.Errorf("mailfwdctl %s: want exit %d, got %s", strings.Join(tc.args, " "), ctl.ExitUsage, r)
			continue
		}
		if !strings.Contains(r.errOut, "Did you mean this?") || !strings.Contains(r.errOut, tc.suggest) {
			t.Errorf("mailfwdctl %s: no suggestion of %q: %s", strings.Join(tc.args, " "), tc.suggest, r)
		}
	}
	// The group alone still shows its help and succeeds.
	r := mustCtl(t, ctl.ExitOK, "queue")
	mustContain(t, "queue help", r.out, "Available Commands:", "release")
}

// The mailfwdctl command lines in the README's and docs' code blocks parse
// too (command, flags, arguments), so the documentation cannot advertise
// what the tool refuses.
func TestDocExamplesParse(t *testing.T) {
	files, _ := filepath.Glob("../../docs/*.md")
	// cmd/dev prints mailfwdctl commands when make run starts, and helm install
	// prints the chart's NOTES.txt: every line of those is read as code.
	files = append(files, "../../README.md", "../../deploy/README.md", "../../charts/mailfwd/README.md", "../../cmd/dev/main.go", "../../charts/mailfwd/templates/NOTES.txt")
	helmAction := regexp.MustCompile(`\{\{[^}]*\}\}`)
	cmdAt := regexp.MustCompile(`(?:^|[\s|;&(]|bin/)(?:mailfwdctl|go run \./cmd/ctl)((?:\s+\S+)*)`)
	n := 0
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(f, ".txt") {
			b = helmAction.ReplaceAll(b, []byte("mail")) // {{ .Release.Namespace }}, {{ include … }}
		}
		inCode := strings.HasSuffix(f, ".go") || strings.HasSuffix(f, ".txt")
		shell := inCode // a shell block: a command may follow sudo, a pipe, VAR=…
		continued := ""
		for i, line := range strings.Split(strings.NewReplacer("%s", "var/policy", "%d", "2525").Replace(string(b)), "\n") {
			if t := strings.TrimSpace(line); strings.HasPrefix(t, "```") {
				inCode = !inCode
				shell = inCode && (t == "```sh" || t == "```bash" || t == "```shell")
				continue
			}
			if !inCode {
				// In prose, a code span that is a whole mailfwdctl command
				// (`mailfwdctl queue flush -S sender`) is one too.
				for _, m := range proseCommand.FindAllStringSubmatch(line, -1) {
					if strings.ContainsAny(m[1], "…/=<[") {
						continue // a placeholder or a list of commands
					}
					n++
					if err := parseNamed(ctl.NewRoot(os.Stdout, os.Stderr), shellWords(m[1])); err != nil {
						t.Errorf("%s:%d: `mailfwdctl %s` is refused: %v", f, i+1, m[1], err)
					}
				}
				continue
			}
			if strings.Contains(line, " level=") {
				continue // a log record
			}
			// A line continued with \ is read with the next ones.
			if l, ok := strings.CutSuffix(strings.TrimSpace(line), "\\"); ok {
				continued += l + " "
				continue
			}
			line, continued = continued+line, ""
			if strings.HasPrefix(strings.TrimSpace(line), "kubectl ") {
				continue // kubectl run mailfwdctl …: a pod's name
			}
			m := cmdAt.FindStringSubmatch(line)
			if m == nil {
				continue
			}
			// Elsewhere (output, logs) only a line that is the command counts:
			// "[redacted: …; mailfwdctl trace --with-bodies records it]" is not.
			if !shell && !docCommandLine.MatchString(line) {
				continue
			}
			cmdline := m[1]
			// Cut at shell syntax that ends the command: comments, pipes, lists,
			// redirections; and at an aside set off by spaces (make run's banner).
			for _, sep := range []string{" #", " |", " &&", " ||", ";", " >", " 2>", " <", ")", "   "} {
				if j := strings.Index(cmdline, sep); j >= 0 {
					cmdline = cmdline[:j]
				}
			}
			words := shellWords(cmdline)
			if len(words) == 0 || strings.Contains(cmdline, "$(") || strings.Contains(cmdline, "…") {
				continue
			}
			// "ls bin/mailfwdctl bin/…" or a table of output is not an invocation.
			if !strings.HasPrefix(words[0], "-") && !isCommand(words[0]) {
				continue
			}
			n++
			root := ctl.NewRoot(os.Stdout, os.Stderr)
			if err := parseOnly(root, words); err != nil && !errors.Is(err, pflag.ErrHelp) {
				t.Errorf("%s:%d: `mailfwdctl %s` is refused: %v", f, i+1, strings.Join(words, " "), err)
			} else if c, _, err := root.Find(words); err == nil {
				// An old name kept hidden for scripts (policy --dir) is not for the docs.
				c.Flags().Visit(func(fl *pflag.Flag) {
					if fl.Hidden || fl.Deprecated != "" {
						t.Errorf("%s:%d: `mailfwdctl %s` uses the old flag --%s", f, i+1, strings.Join(words, " "), fl.Name)
					}
				})
			}
		}
	}
	if n < 10 {
		t.Fatalf("found only %d mailfwdctl lines in the docs; the extraction is broken", n)
	}
	t.Logf("%d documented command lines checked", n)
}

// parseNamed checks a command named in prose (`mailfwdctl policy check`,
// `mailfwdctl queue flush -S sender`): the command exists and takes the
// flags and values shown; its arguments may be left out.
func parseNamed(root *cobra.Command, args []string) error {
	c, rest, err := root.Find(args)
	if err != nil {
		return err
	}
	if c.HasSubCommands() && len(rest) > 0 && !strings.HasPrefix(rest[0], "-") {
		return fmt.Errorf("unknown command %q for %q", rest[0], c.CommandPath())
	}
	if err := c.ParseFlags(rest); err != nil && !errors.Is(err, pflag.ErrHelp) && !strings.Contains(err.Error(), "needs an argument") {
		return err
	}
	return nil
}

// proseCommand: an inline code span holding a mailfwdctl command.
var proseCommand = regexp.MustCompile("`mailfwdctl ([^`]+)`")

// docCommandLine: a line that is a mailfwdctl command ("$ " prompt and
// VAR=value assignments allowed before it).
var docCommandLine = regexp.MustCompile(`^\s*(?:\$ )?(?:[A-Z_]+=\S+\s+)*(?:\S*/)?mailfwdctl\s`)

func isCommand(name string) bool {
	for _, c := range ctl.NewRoot(os.Stdout, os.Stderr).Commands() {
		if c.Name() == name || slices.Contains(c.Aliases, name) {
			return true
		}
	}
	return false
}
