// Package config gives every kiln binary the same flag conventions: each
// flag may also be set from the environment as KILN_<NAME>, with dashes
// turned into underscores (--nats-url ↔ KILN_NATS_URL). A flag given on the
// command line wins over the environment.
package config

import (
	"flag"
	"fmt"
	"os"
	"strings"
)

// EnvName is the environment variable that sets the named flag.
func EnvName(flagName string) string {
	return "KILN_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// Parse parses args into fs and then fills every flag not given on the
// command line from its KILN_ variable, if set.
func Parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] || err != nil {
			return
		}
		name := EnvName(f.Name)
		if v, ok := os.LookupEnv(name); ok {
			if e := fs.Set(f.Name, v); e != nil {
				err = fmt.Errorf("%s=%q: %w", name, v, e)
			}
		}
	})
	return err
}

// Labels is a repeatable k=v flag value.
type Labels map[string]string

// String renders the labels as k=v,k=v.
func (l Labels) String() string {
	parts := make([]string, 0, len(l))
	for k, v := range l {
		parts = append(parts, k+"="+v)
	}
	return strings.Join(parts, ",")
}

// Set adds comma-separated k=v pairs.
func (l Labels) Set(s string) error {
	for _, kv := range strings.Split(s, ",") {
		if kv == "" {
			continue
		}
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return fmt.Errorf("label %q is not key=value", kv)
		}
		l[k] = v
	}
	return nil
}
