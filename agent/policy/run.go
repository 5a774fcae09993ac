package policy

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/tonistiigi/go-csvvalue"
)

// rewrite replaces a RUN instruction's flags.
type rewrite struct {
	line  int      // the instruction's first line, 1-based
	flags []string // the flags to write, unquoted
}

// run checks a RUN's flags: --network=host and --security=insecure only
// if the tenant allows them; cache mounts get the tenant's id prefix
// (refused in an ONBUILD trigger, which runs in another build).
func (w *walker) run(n *parser.Node, inOnbuild bool) (*rewrite, error) {
	flags := slices.Clone(n.Flags)
	changed := false
	for i, f := range flags {
		name, value, _ := strings.Cut(strings.TrimPrefix(f, "--"), "=")
		lv := strings.ToLower(value)
		switch name {
		case "network":
			if (lv == "host" || strings.Contains(value, "$")) && !w.p.AllowNetworkHost {
				return nil, &Refusal{What: "RUN " + f, Why: fmt.Sprintf(" (tenant %q does not allow host networking)", w.p.Tenant), Line: n.StartLine}
			}
		case "security":
			if (lv == "insecure" || strings.Contains(value, "$")) && !w.p.AllowInsecure {
				return nil, &Refusal{What: "RUN " + f, Why: fmt.Sprintf(" (tenant %q does not allow insecure builds)", w.p.Tenant), Line: n.StartLine}
			}
		case "mount":
			mount, isCache, err := w.cacheMount(value)
			if err != nil {
				return nil, &Refusal{What: "RUN " + f, Why: ": " + err.Error(), Line: n.StartLine}
			}
			if !isCache {
				continue
			}
			if inOnbuild {
				return nil, &Refusal{What: "ONBUILD RUN " + f, Why: ": a cache mount in an ONBUILD trigger would run in another build, outside this tenant's cache namespace", Line: n.StartLine}
			}
			flags[i] = "--mount=" + mount
			changed = true
		}
	}
	if !changed {
		return nil, nil
	}
	for _, f := range flags {
		if strings.IndexFunc(f, func(r rune) bool { return r > 0x7e || r < 0x20 && r != '\t' }) >= 0 {
			return nil, &Refusal{What: "RUN " + f, Why: ": the agent rewrites cache mounts only in flags of printable ASCII", Line: n.StartLine}
		}
	}
	return &rewrite{line: n.StartLine, flags: flags}, nil
}

// cacheMount returns a --mount value with a cache mount's id prefixed
// (the target, BuildKit's id when none is given, when it has no id), and
// whether it is a cache mount at all.
func (w *walker) cacheMount(value string) (string, bool, error) {
	fields, err := csvvalue.Fields(value, nil)
	if err != nil {
		return "", false, fmt.Errorf("cannot read the mount's fields: %w", err)
	}
	typ, target, hasID := "bind", "", false
	for _, f := range fields {
		k, v, _ := strings.Cut(f, "=")
		switch strings.ToLower(k) {
		case "type":
			if strings.Contains(v, "$") {
				return "", false, fmt.Errorf("the mount type %q is a variable, so the agent cannot tell whether it is a cache mount to namespace", v)
			}
			typ = strings.ToLower(v)
		case "target", "dst", "destination":
			target = v
		case "id":
			hasID = true
		}
	}
	if typ != "cache" {
		return value, false, nil
	}
	prefix := w.p.CachePrefix()
	out := make([]string, 0, len(fields)+1)
	for _, f := range fields {
		if k, v, _ := strings.Cut(f, "="); strings.EqualFold(k, "id") {
			f = k + "=" + prefix + v
		}
		out = append(out, f)
	}
	if !hasID {
		out = append(out, "id="+prefix+strings.TrimLeft(target, "/"))
	}
	return joinCSV(out), true, nil
}

// joinCSV writes fields as one CSV record.
func joinCSV(fields []string) string {
	for i, f := range fields {
		if f == "" || strings.ContainsAny(f, ",\"\r\n") || f[0] == ' ' || f[len(f)-1] == ' ' {
			fields[i] = `"` + strings.ReplaceAll(f, `"`, `""`) + `"`
		}
	}
	return strings.Join(fields, ",")
}

// applyRewrites writes each rewritten RUN's logical line (its first
// physical line and those its line continuations join) as one line with
// the new flags, and turns the joined lines into "#" comments: every
// other line, and so every line number, stays as it was. res is the
// Dockerfile as parsed. It checks the result by parsing it again.
func applyRewrites(dockerfile []byte, res *parser.Result, rws []rewrite) ([]byte, error) {
	escape := res.EscapeToken
	lines := strings.SplitAfter(string(dockerfile), "\n")
	byLine := map[int]*parser.Node{}
	for _, n := range res.AST.Children {
		byLine[n.StartLine] = n
	}
	cont := regexp.MustCompile(`([^\` + string(escape) + `])\` + string(escape) + `[ \t]*$|^\` + string(escape) + `[ \t]*$`)
	for _, rw := range rws {
		n := byLine[rw.line]
		i := rw.line - 1
		if n == nil || i >= len(lines) {
			return nil, fmt.Errorf("the agent could not find the RUN on Dockerfile line %d to namespace its cache mount", rw.line)
		}
		end := logicalEnd(lines, i, cont)
		keyword := strings.Fields(lines[i])[0]
		var b strings.Builder
		b.WriteString(keyword)
		for _, f := range rw.flags {
			b.WriteString(" ")
			b.WriteString(quoteFlag(f, escape))
		}
		b.WriteString(" ")
		b.WriteString(runCommand(n))
		nl := "\n"
		if strings.HasSuffix(lines[end], "\r\n") {
			nl = "\r\n"
		} else if !strings.HasSuffix(lines[end], "\n") {
			nl = ""
		}
		lines[i] = b.String() + nl
		for j := i + 1; j <= end; j++ {
			lines[j] = "#" + nl
		}
	}
	out := []byte(strings.Join(lines, ""))
	// The rewritten Dockerfile must say what the original said, flags
	// aside, line for line.
	check, err := parser.Parse(bytes.NewReader(out))
	if err != nil || len(check.AST.Children) != len(res.AST.Children) {
		return nil, fmt.Errorf("the agent could not namespace the Dockerfile's cache mounts (rewritten Dockerfile: %v)", err)
	}
	want := map[int][]string{}
	for _, rw := range rws {
		want[rw.line] = rw.flags
	}
	for k, n := range check.AST.Children {
		orig := res.AST.Children[k]
		flags := orig.Flags
		if f, ok := want[orig.StartLine]; ok {
			flags = f
		}
		if n.StartLine != orig.StartLine || n.Value != orig.Value || !slices.Equal(n.Flags, flags) || runCommand(n) != runCommand(orig) {
			return nil, fmt.Errorf("the agent could not namespace the cache mounts of the RUN on Dockerfile line %d", orig.StartLine)
		}
	}
	return out, nil
}

// logicalEnd returns the index of the last physical line of the logical
// line starting at lines[i], as BuildKit's parser joins continuations
// (skipping comment and empty lines in between).
func logicalEnd(lines []string, i int, cont *regexp.Regexp) int {
	if !cont.MatchString(strings.TrimRight(lines[i], "\r\n")) {
		return i
	}
	for i+1 < len(lines) {
		i++
		l := strings.TrimRight(lines[i], "\r\n")
		if t := strings.TrimSpace(l); t == "" || t[0] == '#' {
			continue
		}
		if !cont.MatchString(l) {
			return i
		}
	}
	return i
}

// runCommand is a RUN's command as the Dockerfile gives it: the shell
// form's text, or the exec form as JSON.
func runCommand(n *parser.Node) string {
	if n.Attributes["json"] {
		var args []string
		for a := n.Next; a != nil; a = a.Next {
			args = append(args, a.Value)
		}
		b, _ := json.Marshal(args)
		return string(b)
	}
	if n.Next == nil {
		return ""
	}
	return n.Next.Value
}

// quoteFlag quotes a flag for BuildKit's flag reader when it needs it.
func quoteFlag(f string, escape rune) string {
	if !strings.ContainsAny(f, " \t\"'"+string(escape)) {
		return f
	}
	var b strings.Builder
	b.WriteString("--\"") // a flag's word must start with "--"
	for _, r := range strings.TrimPrefix(f, "--") {
		if r == '"' || r == escape {
			b.WriteRune(escape)
		}
		b.WriteRune(r)
	}
	b.WriteByte('"')
	return b.String()
}
