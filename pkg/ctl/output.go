package ctl

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"
)

// printer renders read results as -o table|json|yaml.
type printer struct {
	format string
}

func (p printer) validate() error {
	switch p.format {
	case "table", "json", "yaml":
		return nil
	}
	return &ExitError{Code: ExitUsage, Err: fmt.Errorf("-o %q: want table, json or yaml", p.format)}
}

// register adds -o (table, json or yaml) to cmd and checks its value before
// cmd runs.
func (p *printer) register(cmd *cobra.Command) {
	cmd.Flags().StringVarP(&p.format, "output", "o", "table", "table, json or yaml")
	cmd.PreRunE = func(*cobra.Command, []string) error { return p.validate() }
}

// print writes v as JSON/YAML, or calls table for the human form.
func (p printer) print(w io.Writer, v any, table func(tw *tabwriter.Writer)) error {
	switch p.format {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case "yaml":
		b, err := yaml.Marshal(v)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	table(tw)
	return tw.Flush()
}
