package config

import (
	"flag"
	"fmt"
	"io"
	"reflect"
	"strings"
)

// FlagGroup is a heading of --help and the flags under it: exact names, or
// prefixes ending in "*" ("nats-*").
type FlagGroup struct {
	Title string
	Flags []string
}

// PrintFlags writes fs's flags under groups, in the groups' order, with
// GNU-style "--name", the value's type and the default; flags no group names
// come last under "Other". A name matches its exact entry before any prefix.
func PrintFlags(w io.Writer, fs *flag.FlagSet, groups []FlagGroup) {
	byGroup := make([][]*flag.Flag, len(groups)+1)
	fs.VisitAll(func(f *flag.Flag) {
		byGroup[groupOf(f.Name, groups)] = append(byGroup[groupOf(f.Name, groups)], f)
	})
	for i, flags := range byGroup {
		if len(flags) == 0 {
			continue
		}
		title := "Other"
		if i < len(groups) {
			title = groups[i].Title
		}
		fmt.Fprintf(w, "\n%s:\n", title)
		for _, f := range flags {
			name, usage := flag.UnquoteUsage(f)
			if t, ok := f.Value.(interface{ Type() string }); ok && name == "value" {
				name = t.Type()
			}
			head := "  --" + f.Name
			if name != "" {
				head += " " + name
			}
			fmt.Fprintf(w, "%s\n      %s", head, strings.ReplaceAll(usage, "\n", "\n      "))
			if !isZeroDefault(f) {
				fmt.Fprintf(w, " (default %s)", f.DefValue)
			}
			fmt.Fprintln(w)
		}
	}
}

func groupOf(name string, groups []FlagGroup) int {
	for i, g := range groups {
		for _, p := range g.Flags {
			if p == name {
				return i
			}
		}
	}
	for i, g := range groups {
		for _, p := range g.Flags {
			if strings.HasSuffix(p, "*") && strings.HasPrefix(name, strings.TrimSuffix(p, "*")) {
				return i
			}
		}
	}
	return len(groups)
}

// isZeroDefault reports whether f's default is its type's zero value (as
// flag.PrintDefaults leaves it out).
func isZeroDefault(f *flag.Flag) bool {
	switch f.DefValue {
	case "", "0", "false", "0s", "[]":
		return true
	}
	t := reflect.TypeOf(f.Value)
	var z reflect.Value
	if t.Kind() == reflect.Pointer {
		z = reflect.New(t.Elem())
	} else {
		z = reflect.Zero(t)
	}
	zv, ok := z.Interface().(flag.Value)
	return ok && f.DefValue == zv.String()
}
