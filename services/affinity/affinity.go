// Package affinity derives what routes a build to the engine holding its
// cache: its lineage (tenant, repository, Dockerfile path, target), the base
// images it starts FROM, and a hash chain of its leading instructions.
// Parsing is deliberately shallow — enough to predict layer reuse, never
// used to build — and bounded, since the Dockerfile is untrusted input.
package affinity

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"strings"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

// Bounds on what is read from a Dockerfile.
const (
	maxInstructions = 64
	maxDockerfile   = 1 << 20
	hashLen         = 16 // hex characters kept of each hash
)

// Compute returns the affinity of a build of spec by tenant whose Dockerfile
// is dockerfile (nil when unknown: lineage only).
func Compute(tenant string, spec *kilnv1.BuildSpec, dockerfile []byte) *kilnv1.Affinity {
	a := &kilnv1.Affinity{Lineage: Lineage(tenant, spec.GetRepository(), spec.GetDockerfile(), spec.GetTarget())}
	// A build for one named platform (a multi-platform build's child) has
	// its own cache: its lineage and chain hashes include the platform. A
	// build naming none keeps the hashes it always had.
	prev := ""
	if ps := spec.GetPlatforms(); len(ps) == 1 {
		a.Lineage = hash(a.Lineage + "\x00" + ps[0])
		prev = ps[0]
	}
	if len(dockerfile) > maxDockerfile {
		dockerfile = dockerfile[:maxDockerfile]
	}
	instrs := Instructions(dockerfile, maxInstructions)
	args := spec.GetBuildArgs()
	meta := map[string]string{} // ARGs before the first FROM, overridden by build args
	seenFrom := false
	for _, in := range instrs {
		keyword, rest, _ := strings.Cut(in, " ")
		switch {
		case keyword == "ARG" && !seenFrom:
			name, def, _ := strings.Cut(rest, "=")
			name = strings.TrimSpace(name)
			if v, ok := args[name]; ok {
				def = v
			}
			meta[name] = strings.Trim(def, `"'`)
		case keyword == "FROM":
			seenFrom = true
			ref := strings.Fields(rest)
			for len(ref) > 0 && strings.HasPrefix(ref[0], "--") {
				ref = ref[1:] // --platform=…
			}
			if len(ref) > 0 {
				img := os.Expand(ref[0], func(k string) string { return meta[k] })
				if img != "" && !strings.EqualFold(img, "scratch") && !containsString(a.BaseImages, img) {
					a.BaseImages = append(a.BaseImages, img)
				}
				in = strings.TrimSpace("FROM " + img + " " + strings.Join(ref[1:], " "))
			}
		}
		prev = hash(prev + "\n" + in)
		a.Chain = append(a.Chain, prev)
	}
	return a
}

// Lineage hashes what identifies a stream of rebuilds of one image.
func Lineage(tenant, repository, dockerfile, target string) string {
	return hash(strings.Join([]string{tenant, repository, dockerfile, target}, "\x00"))
}

// Instructions returns up to max instructions of a Dockerfile, each as its
// upper-case keyword, one space and its arguments with whitespace collapsed;
// comments, parser directives and line continuations are handled.
func Instructions(dockerfile []byte, max int) []string {
	escape := byte('\\')
	var out []string
	var cur strings.Builder
	directives := true
	for raw := range bytes.Lines(dockerfile) {
		if len(out) >= max {
			break
		}
		line := strings.TrimSpace(string(raw))
		if directives {
			if d, ok := strings.CutPrefix(line, "#"); ok {
				if k, v, ok := strings.Cut(strings.TrimSpace(d), "="); ok && strings.EqualFold(strings.TrimSpace(k), "escape") && strings.TrimSpace(v) == "`" {
					escape = '`'
				}
				continue
			}
			directives = false
		}
		if strings.HasPrefix(line, "#") || (line == "" && cur.Len() == 0) {
			continue
		}
		if len(line) > 0 && line[len(line)-1] == escape {
			cur.WriteString(line[:len(line)-1])
			cur.WriteByte(' ')
			continue
		}
		cur.WriteString(line)
		if in := normalize(cur.String()); in != "" {
			out = append(out, in)
		}
		cur.Reset()
	}
	if cur.Len() > 0 && len(out) < max {
		if in := normalize(cur.String()); in != "" {
			out = append(out, in)
		}
	}
	return out
}

func normalize(s string) string {
	fields := strings.Fields(s)
	if len(fields) == 0 {
		return ""
	}
	fields[0] = strings.ToUpper(fields[0])
	return strings.Join(fields, " ")
}

func hash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])[:hashLen]
}

func containsString(xs []string, s string) bool {
	for _, x := range xs {
		if x == s {
			return true
		}
	}
	return false
}
