package ctl

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/mailfwd/mailfwd/pkg/address"
	"github.com/mailfwd/mailfwd/pkg/dkim"
	"github.com/mailfwd/mailfwd/pkg/policy"
)

func newDKIMCmd(g *globals) *cobra.Command {
	var sf secretFlags
	cmd := &cobra.Command{
		Use:   "dkim",
		Short: "Manage the DKIM signing keys (the dkim key of the policy Secret)",
		Long: `One signing key per sender domain, in the "dkim" key of the policy Secret
(default mailfwd-policy-secret). keygen makes the key here, writes it into the
Secret and prints the TXT record to publish in the domain's DNS.

  opendkim-genkey -d example.com -s s1     mailfwdctl dkim keygen --domain example.com --selector s1`,
	}
	sf.register(cmd.PersistentFlags())
	cmd.AddCommand(newDKIMKeygen(g, &sf), newDKIMList(g, &sf))
	return cmd
}

func parseDKIM(files map[string][]byte) (*dkim.Keys, error) {
	p, err := policy.Parse(map[string][]byte{policy.KeyDKIM: files[policy.KeyDKIM]})
	if err != nil {
		return nil, &ExitError{Code: ExitInvalid, Err: fmt.Errorf("the dkim key does not validate (fix it first): %w", err)}
	}
	return p.DKIM, nil
}

func newDKIMKeygen(g *globals, sf *secretFlags) *cobra.Command {
	var domain, selector, alg string
	var force, dryRun bool
	cmd := &cobra.Command{
		Use:   "keygen --domain DOMAIN --selector SELECTOR",
		Short: "Generate a signing key for a domain, store it in the Secret and print the DNS TXT record",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if domain == "" || selector == "" {
				return usageError("--domain and --selector are required")
			}
			d, err := address.Domain(domain)
			if err != nil {
				return &ExitError{Code: ExitUsage, Err: fmt.Errorf("--domain %q: %v", domain, err)}
			}
			if err := dkim.CheckSelector(selector); err != nil {
				return &ExitError{Code: ExitUsage, Err: err}
			}
			if alg != "rsa" && alg != "ed25519" {
				return &ExitError{Code: ExitUsage, Err: fmt.Errorf("--algorithm %q: want rsa (2048 bits) or ed25519", alg)}
			}
			signer, err := dkim.GenerateKey(alg)
			if err != nil {
				return err
			}
			key := dkim.Key{Domain: d, Selector: strings.ToLower(selector), Signer: signer}
			line, err := key.Line()
			if err != nil {
				return err
			}
			err = g.mutateSecret(cmd.Context(), actionOf(cmd), sf, dryRun, func(files map[string][]byte) (string, error) {
				ks, err := parseDKIM(files)
				if err != nil {
					return "", err
				}
				var lines []string
				replaced := false
				for _, k := range ks.List() {
					if k.Domain == d {
						if !force {
							return "", &ExitError{Code: ExitUsage, Err: fmt.Errorf("%s has a key already (selector %s); --force replaces it (mail signed with the old key fails verification once its TXT record is gone)", d, k.Selector)}
						}
						replaced = true
						continue
					}
					l, err := k.Line()
					if err != nil {
						return "", err
					}
					lines = append(lines, l)
				}
				files[policy.KeyDKIM] = []byte(strings.Join(append(lines, line), "\n") + "\n")
				verb := "added"
				if replaced {
					verb = "replaced"
				}
				return fmt.Sprintf("dkim: %s key for %s, selector %s: %s", key.Algorithm(), d, key.Selector, verb), nil
			})
			if err != nil {
				return err
			}
			zl, err := key.ZoneLine()
			if err != nil {
				return err
			}
			if dryRun {
				fmt.Fprintf(g.out, "Dry run: this key was not stored; it would need this TXT record:\n%s\n", zl)
				return nil
			}
			fmt.Fprintf(g.out, "Publish this TXT record before mail is signed with it:\n%s\n", zl)
			return nil
		},
	}
	cmd.Flags().StringVar(&domain, "domain", "", "sender domain (d=)")
	cmd.Flags().StringVar(&selector, "selector", "", "selector (s=), e.g. s1 or 2026-12")
	cmd.Flags().StringVar(&alg, "algorithm", "rsa", "key type: rsa (2048 bits, verified everywhere) or ed25519 (RFC 8463)")
	cmd.Flags().BoolVar(&force, "force", false, "replace the domain's existing key")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "generate and validate, write nothing")
	return cmd
}

type dkimView struct {
	Domain    string `json:"domain"`
	Selector  string `json:"selector"`
	Algorithm string `json:"algorithm"`
	DNSName   string `json:"dnsName"`
	TXT       string `json:"txt"`
}

func newDKIMList(g *globals, sf *secretFlags) *cobra.Command {
	return newSecretList(g, sf, "List the signing keys and the TXT records to publish (never the private keys)", "DOMAIN\tSELECTOR\tALGORITHM\tTXT RECORD AT",
		func(files map[string][]byte) ([]dkimView, error) {
			ks, err := parseDKIM(files)
			if err != nil {
				return nil, err
			}
			views := []dkimView{}
			for _, k := range ks.List() {
				txt, err := k.TXTRecord()
				if err != nil {
					return nil, err
				}
				views = append(views, dkimView{Domain: k.Domain, Selector: k.Selector, Algorithm: k.Algorithm(), DNSName: k.DNSName(), TXT: txt})
			}
			return views, nil
		},
		func(v dkimView) string { return v.Domain + "\t" + v.Selector + "\t" + v.Algorithm + "\t" + v.DNSName })
}
