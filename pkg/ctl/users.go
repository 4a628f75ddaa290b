package ctl

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/mailfwd/mailfwd/pkg/policy"
	"github.com/mailfwd/mailfwd/pkg/smtpauth"
)

func newUsersCmd(g *globals) *cobra.Command {
	var sf secretFlags
	cmd := &cobra.Command{
		Use:   "users",
		Short: "Manage the SMTP AUTH users (the users key of the policy Secret)",
		Long: `Users for SMTP AUTH on the ingress: a name, a password hash (argon2id or bcrypt,
computed here, on this machine; the password never leaves it) and the envelope
senders each user may use (domains, .parent domains, addresses, <> or *).

They live in the "users" key of the policy Secret (default mailfwd-policy-secret),
which the pods mount beside the policy ConfigMap and reload on change.

  saslpasswd2 -c app1               mailfwdctl users add app1 --sender example.com
  saslpasswd2 app1                  mailfwdctl users passwd app1
  saslpasswd2 -d app1               mailfwdctl users delete app1
  sasldblistusers2                  mailfwdctl users list`,
	}
	sf.register(cmd.PersistentFlags())
	cmd.AddCommand(newUsersList(g, &sf), newUsersAdd(g, &sf), newUsersPasswd(g, &sf), newUsersDelete(g, &sf))
	return cmd
}

// parseUsers parses the users key alone.
func parseUsers(files map[string][]byte) (*smtpauth.Users, error) {
	p, err := policy.Parse(map[string][]byte{policy.KeyUsers: files[policy.KeyUsers]})
	if err != nil {
		return nil, &ExitError{Code: ExitInvalid, Err: fmt.Errorf("the users key does not validate (fix it first): %w", err)}
	}
	return p.Users, nil
}

// loadUsers reads the users key of the policy Secret as it is now.
func (f *secretFlags) loadUsers(ctx context.Context) (*smtpauth.Users, error) {
	_, files, err := f.load(ctx)
	if err != nil {
		return nil, err
	}
	return parseUsers(files)
}

type userView struct {
	Name      string   `json:"name"`
	Algorithm string   `json:"algorithm"`
	Senders   []string `json:"senders"`
}

func newUsersList(g *globals, sf *secretFlags) *cobra.Command {
	return newSecretList(g, sf, "List the users and the senders they may use (never the hashes)", "NAME\tHASH\tSENDERS",
		func(files map[string][]byte) ([]userView, error) {
			us, err := parseUsers(files)
			if err != nil {
				return nil, err
			}
			views := []userView{}
			for _, u := range us.List() {
				views = append(views, userView{Name: u.Name, Algorithm: string(u.Hash.Algorithm), Senders: u.Senders})
			}
			return views, nil
		},
		func(v userView) string { return v.Name + "\t" + v.Algorithm + "\t" + strings.Join(v.Senders, ",") })
}

// passwordFlags say where the password comes from and how to hash it.
type passwordFlags struct {
	stdin     bool
	algorithm string
}

func (p *passwordFlags) register(cmd *cobra.Command) {
	cmd.Flags().BoolVar(&p.stdin, "password-stdin", false, "read the password from the first line of standard input (scripts); otherwise it is asked on the terminal, without echo")
	cmd.Flags().StringVar(&p.algorithm, "algorithm", "argon2id", "password hash: argon2id or bcrypt")
}

// maxPasswordInput bounds what --password-stdin reads.
const maxPasswordInput = 4096

// hash reads the password and hashes it here, client-side.
func (p *passwordFlags) hash(cmd *cobra.Command, g *globals, user string) (string, error) {
	alg := smtpauth.Algorithm(p.algorithm)
	if alg != smtpauth.Argon2id && alg != smtpauth.Bcrypt {
		return "", &ExitError{Code: ExitUsage, Err: fmt.Errorf("--algorithm %q: want argon2id or bcrypt", p.algorithm)}
	}
	var pw string
	in := cmd.InOrStdin()
	if p.stdin {
		line, err := bufio.NewReaderSize(io.LimitReader(in, maxPasswordInput), maxPasswordInput).ReadString('\n')
		if err != nil && err != io.EOF {
			return "", err
		}
		if err == io.EOF && len(line) >= maxPasswordInput {
			return "", &ExitError{Code: ExitUsage, Err: fmt.Errorf("password on stdin longer than %d bytes", maxPasswordInput)}
		}
		pw = strings.TrimRight(line, "\r\n")
	} else {
		f, ok := in.(*os.File)
		if !ok || !term.IsTerminal(int(f.Fd())) {
			return "", usageError("standard input is not a terminal: use --password-stdin to read the password from it")
		}
		fmt.Fprintf(g.errOut, "Password for %s: ", user)
		a, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(g.errOut)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(g.errOut, "Again: ")
		b, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(g.errOut)
		if err != nil {
			return "", err
		}
		if string(a) != string(b) {
			return "", usageError("the passwords differ; nothing written")
		}
		pw = string(a)
	}
	if pw == "" {
		return "", usageError("empty password")
	}
	h, err := smtpauth.Hash(alg, pw)
	if err != nil {
		return "", &ExitError{Code: ExitUsage, Err: err}
	}
	return h, nil
}

// setUsers replaces the users key with us.
func setUsers(files map[string][]byte, us []smtpauth.User) error {
	set, err := smtpauth.NewUsers(us)
	if err != nil {
		return err
	}
	if set.Len() == 0 {
		delete(files, policy.KeyUsers)
		return nil
	}
	files[policy.KeyUsers] = []byte(set.Text())
	return nil
}

func userList(us *smtpauth.Users) []smtpauth.User {
	var out []smtpauth.User
	for _, u := range us.List() {
		out = append(out, *u)
	}
	return out
}

func newUsersAdd(g *globals, sf *secretFlags) *cobra.Command {
	var pf passwordFlags
	var senders []string
	cmd := secretChangeCmd(g, sf, &cobra.Command{
		Use:     "add NAME --sender DOMAIN|ADDRESS…",
		Short:   "Add a user; the password is asked (or read with --password-stdin) and hashed here",
		Example: "  mailfwdctl users add app1 --sender example.com --sender alerts@example.net\n  printf '%s\\n' \"$PW\" | mailfwdctl users add app2 --sender .apps.example.com --password-stdin",
		Args:    cobra.ExactArgs(1),
	}, func(cmd *cobra.Command, args []string) (func(map[string][]byte) (string, error), error) {
		name := args[0]
		if err := smtpauth.CheckName(name); err != nil {
			return nil, &ExitError{Code: ExitUsage, Err: err}
		}
		if len(senders) == 0 {
			return nil, usageError("--sender is required (a domain, .parent domain, address, <> or *), once per sender")
		}
		// Check the senders before asking for a password.
		if _, err := smtpauth.ParseSenders(senders); err != nil {
			return nil, &ExitError{Code: ExitUsage, Err: err}
		}
		if us, err := sf.loadUsers(cmd.Context()); err != nil {
			return nil, err
		} else if _, ok := us.Lookup(name); ok {
			return nil, &ExitError{Code: ExitUsage, Err: fmt.Errorf("user %s exists (change the password with: mailfwdctl users passwd %s)", strings.ToLower(name), name)}
		}
		h, err := pf.hash(cmd, g, name)
		if err != nil {
			return nil, err
		}
		u, err := smtpauth.ParseUserLine(name + " " + h + " " + strings.Join(senders, ","))
		if err != nil {
			return nil, &ExitError{Code: ExitUsage, Err: err}
		}
		return func(files map[string][]byte) (string, error) {
			us, err := parseUsers(files)
			if err != nil {
				return "", err
			}
			if _, ok := us.Lookup(u.Name); ok {
				return "", &ExitError{Code: ExitUsage, Err: fmt.Errorf("user %s exists", u.Name)}
			}
			if err := setUsers(files, append(userList(us), u)); err != nil {
				return "", err
			}
			return fmt.Sprintf("user %s: added (%s), may send as %s", u.Name, u.Hash.Algorithm, strings.Join(u.Senders, ",")), nil
		}, nil
	})
	pf.register(cmd)
	cmd.Flags().StringArrayVar(&senders, "sender", nil, "an envelope sender the user may use: example.com, .example.com (subdomains), user@example.com, <> or *; repeat for more")
	return cmd
}

func newUsersPasswd(g *globals, sf *secretFlags) *cobra.Command {
	var pf passwordFlags
	cmd := secretChangeCmd(g, sf, &cobra.Command{
		Use:   "passwd NAME",
		Short: "Set a user's password (asked, or read with --password-stdin; hashed here)",
		Args:  cobra.ExactArgs(1),
	}, func(cmd *cobra.Command, args []string) (func(map[string][]byte) (string, error), error) {
		us, err := sf.loadUsers(cmd.Context())
		if err != nil {
			return nil, err
		}
		if _, ok := us.Lookup(args[0]); !ok {
			return nil, &ExitError{Code: ExitNotFound, Err: fmt.Errorf("no user %s (add it with: mailfwdctl users add %s --sender …)", args[0], args[0])}
		}
		h, err := pf.hash(cmd, g, args[0])
		if err != nil {
			return nil, err
		}
		ph, err := smtpauth.ParseHash(h)
		if err != nil {
			return nil, err
		}
		return func(files map[string][]byte) (string, error) {
			us, err := parseUsers(files)
			if err != nil {
				return "", err
			}
			list := userList(us)
			found := ""
			for i := range list {
				if list[i].Name == strings.ToLower(args[0]) {
					list[i].Hash, found = ph, list[i].Name
				}
			}
			if found == "" {
				return "", &ExitError{Code: ExitNotFound, Err: fmt.Errorf("no user %s", args[0])}
			}
			if err := setUsers(files, list); err != nil {
				return "", err
			}
			return fmt.Sprintf("user %s: password changed (%s)", found, ph.Algorithm), nil
		}, nil
	})
	pf.register(cmd)
	return cmd
}

func newUsersDelete(g *globals, sf *secretFlags) *cobra.Command {
	var of opFlags
	cmd := &cobra.Command{
		Use:   "delete NAME",
		Short: "Delete a user (its sessions already authenticated go on; new AUTH fails)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := strings.ToLower(args[0])
			if err := g.confirm(cmd, &of, fmt.Sprintf("delete user %s?", name)); err != nil {
				return err
			}
			return g.mutateSecret(cmd.Context(), actionOf(cmd), sf, of.dryRun, func(files map[string][]byte) (string, error) {
				us, err := parseUsers(files)
				if err != nil {
					return "", err
				}
				if _, ok := us.Lookup(name); !ok {
					return "", &ExitError{Code: ExitNotFound, Err: fmt.Errorf("no user %s", name)}
				}
				var keep []smtpauth.User
				for _, u := range userList(us) {
					if u.Name != name {
						keep = append(keep, u)
					}
				}
				if err := setUsers(files, keep); err != nil {
					return "", err
				}
				return fmt.Sprintf("user %s: deleted", name), nil
			})
		},
	}
	of.register(cmd, true)
	return cmd
}
