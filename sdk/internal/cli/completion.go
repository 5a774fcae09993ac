package cli

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/spf13/pflag"

	"github.com/kilnbuild/kiln/sdk/internal/progress"
)

// completionShells are the shells `kiln completion` writes a script for.
var completionShells = []string{"bash", "zsh", "fish"}

func newCompletionFlagSet() *pflag.FlagSet {
	return pflag.NewFlagSet("completion", pflag.ContinueOnError)
}

var completionHelp = helpText{
	usage: "kiln completion bash|zsh|fish",
	about: `Print a script that makes the shell complete kiln's commands, their flags,
flag values (states, progress modes, files) and, where a command takes
builds, the ids of your latest builds (from 'kiln ls', with the gateway
and token of the environment).`,
	examples: `# bash, this shell; for every shell, add the line to ~/.bashrc
source <(kiln completion bash)
# zsh: this shell, or save it as _kiln in a directory of $fpath
source <(kiln completion zsh)
kiln completion fish > ~/.config/fish/completions/kiln.fish`,
	exits: []exitStatus{{ExitOK, "printed the script"}, {ExitUsage, "usage error (no or an unknown shell)"}},
}

// completion is `kiln completion`.
func (a *App) completion(_ context.Context, args []string) int {
	fs := newCompletionFlagSet()
	if code, done := a.parseFlags("completion", fs, completionHelp, args); done {
		return code
	}
	if fs.NArg() != 1 || !slices.Contains(completionShells, fs.Arg(0)) {
		return a.usageErrorf("completion", `"kiln completion" takes one shell: bash, zsh or fish`)
	}
	cmds := completionCommands()
	switch fs.Arg(0) {
	case "bash":
		writeBashCompletion(a.Stdout, cmds)
	case "zsh":
		writeZshCompletion(a.Stdout, cmds)
	case "fish":
		writeFishCompletion(a.Stdout, cmds)
	}
	return ExitOK
}

// argKind is what a command's positional arguments are, for completion.
type argKind int

const (
	argNone argKind = iota
	argDir
	argBuilds
	argWords // the command's subcommands
)

// completionCommand is a command as the completion scripts see it.
type completionCommand struct {
	// names are the command's name and aliases.
	names   []string
	summary string
	args    argKind
	words   []string
	flags   []completionFlag
}

// completionFlag is one flag of a command.
type completionFlag struct {
	long, short string
	summary     string
	// value is set for a flag that takes a value; words are the values to
	// offer, files and dirs say that a path is wanted.
	value       bool
	repeatable  bool
	words       []string
	files, dirs bool
}

// argKinds says what each command's positional arguments are.
var argKinds = map[string]argKind{
	"build": argDir, "logs": argBuilds, "inspect": argBuilds, "cancel": argBuilds, "retry": argBuilds,
	"agents": argWords, "completion": argWords,
}

// fileFlags take a path.
var fileFlags = []string{"file", "metadata-file", "iidfile", "token-file", "tls-ca", "tls-cert", "tls-key"}

// completionCommands describes every command for the completion scripts,
// from the commands' own flag sets, so a new flag is completed as soon as
// it exists.
func completionCommands() []completionCommand {
	var out []completionCommand
	for _, c := range commands() {
		cc := completionCommand{
			names: append([]string{c.name}, c.aliases...), summary: c.summary,
			args: argKinds[c.name], words: c.subcommands,
		}
		if c.flags != nil {
			c.flags().VisitAll(func(f *pflag.Flag) {
				cc.flags = append(cc.flags, newCompletionFlag(c.name, f))
			})
		}
		out = append(out, cc)
	}
	return out
}

func newCompletionFlag(cmd string, f *pflag.Flag) completionFlag {
	cf := completionFlag{long: f.Name, short: f.Shorthand, summary: completionSummary(f.Usage)}
	typ := f.Value.Type()
	if typ == "bool" {
		return cf
	}
	cf.value = true
	cf.repeatable = strings.HasSuffix(typ, "Array") || strings.HasSuffix(typ, "Slice")
	switch {
	case slices.Contains(fileFlags, f.Name):
		cf.files = true
	case f.Name == "state":
		cf.words = stateNames
	case f.Name == "progress":
		for _, m := range progress.Modes {
			if cmd != "logs" || m != progress.Quiet {
				cf.words = append(cf.words, string(m))
			}
		}
	case f.Name == "builder":
		cf.words = []string{"classic", "buildkit"}
	case f.Name == "format" && cmd == "version":
		cf.words = []string{"text", "json"}
	case f.Name == "format":
		cf.words = []string{"table", "json"}
	}
	return cf
}

// completionSummary shortens a flag's usage to its first clause, in
// characters every shell's script takes without quoting.
func completionSummary(usage string) string {
	if i := strings.IndexAny(usage, ".;(:"); i > 0 {
		usage = usage[:i]
	}
	var b strings.Builder
	for _, r := range usage {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', strings.ContainsRune(" ,-/=_+", r):
			b.WriteRune(r)
		}
	}
	s := strings.TrimSpace(b.String())
	if r := []rune(s); len(r) > 60 {
		s = strings.TrimSpace(string(r[:60]))
	}
	return s
}

// buildIDsCommand lists the ids the scripts offer where a command takes
// builds.
const buildIDsCommand = `kiln ls --limit 50 --format '{{.ID}}' 2>/dev/null`

func writeBashCompletion(w io.Writer, cmds []completionCommand) {
	var top []string
	for _, c := range cmds {
		top = append(top, c.names...)
	}
	fmt.Fprintf(w, `# bash completion for kiln. Load it with: source <(kiln completion bash)

__kiln_builds() {
    %s
}

_kiln() {
    local cur prev cmd i
    cur=${COMP_WORDS[COMP_CWORD]}
    prev=${COMP_WORDS[COMP_CWORD-1]}
    # --flag=value: bash splits at the =.
    if [[ $cur == = ]]; then
        cur=
    elif [[ $prev == = && $COMP_CWORD -ge 2 ]]; then
        prev=${COMP_WORDS[COMP_CWORD-2]}
    fi
    cmd=
    for ((i = 1; i < COMP_CWORD; i++)); do
        case ${COMP_WORDS[i]} in
        -*) ;;
        *)
            cmd=${COMP_WORDS[i]}
            break
            ;;
        esac
    done
    COMPREPLY=()
    case $cmd in
    "")
        COMPREPLY=($(compgen -W "%s --help --version" -- "$cur"))
        ;;
`, buildIDsCommand, strings.Join(top, " "))
	for _, c := range cmds {
		fmt.Fprintf(w, "    %s)\n        case $prev in\n", strings.Join(c.names, " | "))
		var files, plain []string
		for _, f := range c.flags {
			if !f.value {
				continue
			}
			switch {
			case f.files:
				files = append(files, bashFlagPattern(f))
			case len(f.words) > 0:
				fmt.Fprintf(w, "        %s)\n            COMPREPLY=($(compgen -W \"%s\" -- \"$cur\"))\n            return\n            ;;\n", bashFlagPattern(f), strings.Join(f.words, " "))
			default:
				plain = append(plain, bashFlagPattern(f))
			}
		}
		if len(files) > 0 {
			fmt.Fprintf(w, "        %s)\n            COMPREPLY=($(compgen -f -- \"$cur\"))\n            return\n            ;;\n", strings.Join(files, " | "))
		}
		if len(plain) > 0 {
			// A value nothing is known about: offer nothing.
			fmt.Fprintf(w, "        %s)\n            return\n            ;;\n", strings.Join(plain, " | "))
		}
		fmt.Fprintf(w, "        esac\n        if [[ $cur == -* ]]; then\n            COMPREPLY=($(compgen -W \"%s\" -- \"$cur\"))\n            return\n        fi\n", strings.Join(flagNames(c.flags), " "))
		switch c.args {
		case argDir:
			fmt.Fprintf(w, "        COMPREPLY=($(compgen -d -- \"$cur\"))\n")
		case argBuilds:
			fmt.Fprintf(w, "        COMPREPLY=($(compgen -W \"$(__kiln_builds)\" -- \"$cur\"))\n")
		case argWords:
			fmt.Fprintf(w, "        COMPREPLY=($(compgen -W \"%s\" -- \"$cur\"))\n", strings.Join(c.words, " "))
		}
		fmt.Fprintf(w, "        ;;\n")
	}
	fmt.Fprintf(w, "    esac\n}\n\ncomplete -F _kiln kiln\n")
}

// bashFlagPattern is a case pattern matching the flag's names.
func bashFlagPattern(f completionFlag) string {
	if f.short != "" {
		return "--" + f.long + " | -" + f.short
	}
	return "--" + f.long
}

// flagNames lists the flags' names as typed, long ones first.
func flagNames(flags []completionFlag) []string {
	names := []string{"--help"}
	for _, f := range flags {
		names = append(names, "--"+f.long)
	}
	for _, f := range flags {
		if f.short != "" {
			names = append(names, "-"+f.short)
		}
	}
	return names
}

func writeZshCompletion(w io.Writer, cmds []completionCommand) {
	fmt.Fprintf(w, `#compdef kiln
# zsh completion for kiln. Load it with: source <(kiln completion zsh)
# or save it as _kiln in a directory of $fpath.

__kiln_builds() {
  local -a ids
  ids=(${(f)"$(%s)"})
  _describe -t builds 'build' ids
}

_kiln() {
  local -a commands
  commands=(
`, buildIDsCommand)
	for _, c := range cmds {
		for _, name := range c.names {
			fmt.Fprintf(w, "    '%s:%s'\n", name, completionSummary(c.summary))
		}
	}
	fmt.Fprintf(w, `  )
  if (( CURRENT == 2 )); then
    _describe -t commands 'kiln command' commands
    return
  fi
  local cmd=$words[2]
  shift words
  (( CURRENT-- ))
  case $cmd in
`)
	for _, c := range cmds {
		fmt.Fprintf(w, "  %s)\n    _arguments -s \\\n      '--help[Show the command'\\''s help]'", strings.Join(c.names, "|"))
		for _, f := range c.flags {
			for _, spec := range zshFlagSpecs(f) {
				fmt.Fprintf(w, " \\\n      %s", spec)
			}
		}
		switch c.args {
		case argDir:
			fmt.Fprintf(w, " \\\n      '1:build context:_files -/'")
		case argBuilds:
			fmt.Fprintf(w, " \\\n      '*:build:__kiln_builds'")
		case argWords:
			fmt.Fprintf(w, " \\\n      '1:%s:(%s)'", c.names[0], strings.Join(c.words, " "))
		}
		fmt.Fprintf(w, "\n    ;;\n")
	}
	fmt.Fprintf(w, `  esac
}

if [[ $zsh_eval_context[-1] == loadautofunc ]]; then
  _kiln "$@"
else
  compdef _kiln kiln
fi
`)
}

// zshFlagSpecs are the _arguments specs of a flag, one for each of its
// names.
func zshFlagSpecs(f completionFlag) []string {
	action := ""
	if f.value {
		switch {
		case f.files:
			action = ":file:_files"
		case len(f.words) > 0:
			action = ":" + f.long + ":(" + strings.Join(f.words, " ") + ")"
		default:
			action = ":" + f.long + ": "
		}
	}
	repeat := ""
	if f.repeatable {
		repeat = "*"
	}
	long, short := "--"+f.long, "-"+f.short
	if f.value {
		long, short = long+"=", short+"+"
	}
	specs := []string{fmt.Sprintf("'%s%s[%s]%s'", repeat, long, f.summary, action)}
	if f.short != "" {
		specs = append(specs, fmt.Sprintf("'%s%s[%s]%s'", repeat, short, f.summary, action))
	}
	return specs
}

func writeFishCompletion(w io.Writer, cmds []completionCommand) {
	fmt.Fprintf(w, `# fish completion for kiln. Load it with: kiln completion fish | source
# or save it as ~/.config/fish/completions/kiln.fish.

function __kiln_builds
    %s
end

complete -c kiln -f
complete -c kiln -n __fish_use_subcommand -l help -d 'Show the usage'
complete -c kiln -n __fish_use_subcommand -l version -d 'Show the client version'
`, buildIDsCommand)
	for _, c := range cmds {
		for _, name := range c.names {
			fmt.Fprintf(w, "complete -c kiln -n __fish_use_subcommand -a %s -d '%s'\n", name, completionSummary(c.summary))
		}
	}
	for _, c := range cmds {
		cond := "'__fish_seen_subcommand_from " + strings.Join(c.names, " ") + "'"
		fmt.Fprintf(w, "complete -c kiln -n %s -l help -d 'Show the command help'\n", cond)
		for _, f := range c.flags {
			line := fmt.Sprintf("complete -c kiln -n %s -l %s", cond, f.long)
			if f.short != "" {
				line += " -s " + f.short
			}
			switch {
			case f.files:
				line += " -r -F"
			case len(f.words) > 0:
				line += " -x -a '" + strings.Join(f.words, " ") + "'"
			case f.value:
				line += " -x"
			}
			fmt.Fprintf(w, "%s -d '%s'\n", line, f.summary)
		}
		switch c.args {
		case argDir:
			fmt.Fprintf(w, "complete -c kiln -n %s -a '(__fish_complete_directories)'\n", cond)
		case argBuilds:
			fmt.Fprintf(w, "complete -c kiln -n %s -a '(__kiln_builds)'\n", cond)
		case argWords:
			fmt.Fprintf(w, "complete -c kiln -n %s -a '%s'\n", cond, strings.Join(c.words, " "))
		}
	}
}
