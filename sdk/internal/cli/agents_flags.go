package cli

import (
	"io"

	"github.com/spf13/pflag"
)

// newAgentsFlagSet returns the flag set of `kiln agents` (name "agents")
// and of `kiln agents drain|undrain` (name "agents drain", …).
func newAgentsFlagSet(name string, conn *connFlags, format *string) *pflag.FlagSet {
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	conn.register(fs)
	fs.StringVar(format, "format", "table", `Output format: "table", "json" (one agent per line) or a Go template ('{{.Name}}'; "table {{.Name}}\t{{.State}}" for columns); fields .Name .State .Slots .Engine .Storage .Labels .Lineages .LastSeen .Version .Warnings .Features .Record`)
	return fs
}
