package ctl

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/mailfwd/mailfwd/pkg/policy"
)

func newSRSCmd(g *globals) *cobra.Command {
	var sf secretFlags
	cmd := &cobra.Command{
		Use:   "srs",
		Short: "Manage the SRS secrets (the srs key of the policy Secret)",
		Long: `The Sender Rewriting Scheme signs the envelope sender of forwarded mail with a secret
kept in the "srs" key of the policy Secret; srs_domain in the policy's settings turns it
on. The first secret signs, every listed one verifies: rotate keeps the previous
secrets so that bounces to addresses signed before the rotation still come back
(keep them for srs_max_age, 21 days by default).

  postsrsd's /etc/postsrsd.secret     mailfwdctl srs rotate`,
	}
	sf.register(cmd.PersistentFlags())
	cmd.AddCommand(newSRSRotate(g, &sf), newSRSList(g, &sf))
	return cmd
}

func srsSecrets(files map[string][]byte) []string { return entryLines(files[policy.KeySRS]) }

// secretID names a secret without showing it.
func secretID(secret string) string {
	h := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(h[:4])
}

func newSRSRotate(g *globals, sf *secretFlags) *cobra.Command {
	var keep int
	cmd := secretChangeCmd(g, sf, &cobra.Command{
		Use:   "rotate",
		Short: "Generate a new signing secret; keep the newest --keep previous ones for verifying",
		Args:  cobra.NoArgs,
	}, func(*cobra.Command, []string) (func(map[string][]byte) (string, error), error) {
		if keep < 0 || keep >= 8 {
			return nil, usageError("--keep must be 0 to 7")
		}
		raw := make([]byte, 24)
		if _, err := rand.Read(raw); err != nil {
			return nil, err
		}
		secret := base64.RawURLEncoding.EncodeToString(raw)
		return func(files map[string][]byte) (string, error) {
			old := srsSecrets(files)
			if len(old) > keep {
				old = old[:keep]
			}
			files[policy.KeySRS] = []byte(strings.Join(append([]string{secret}, old...), "\n") + "\n")
			return fmt.Sprintf("srs: new signing secret %s; %d previous secret(s) still verify", secretID(secret), len(old)), nil
		}, nil
	})
	cmd.Flags().IntVar(&keep, "keep", 1, "previous secrets kept for verifying (bounces in flight)")
	return cmd
}

func newSRSList(g *globals, sf *secretFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List the SRS secrets by fingerprint (the first signs)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, files, err := sf.load(cmd.Context())
			if err != nil {
				return err
			}
			list := srsSecrets(files)
			if len(list) == 0 {
				fmt.Fprintf(g.out, "%s: no SRS secret (mailfwdctl srs rotate makes one)\n", st.Where())
				return nil
			}
			for i, s := range list {
				role := "verifies"
				if i == 0 {
					role = "signs"
				}
				fmt.Fprintf(g.out, "%d\t%s\t%s\n", i+1, secretID(s), role)
			}
			return nil
		},
	}
}
