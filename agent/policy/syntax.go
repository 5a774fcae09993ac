package policy

import (
	"bufio"
	"bytes"
	"regexp"
	"strings"

	"github.com/moby/buildkit/frontend/dockerfile/parser"
)

// legacyDirective is a parser directive as BuildKit before 0.10 matched
// it (0.8, in Docker 20.10, knew only "#"; 0.9 added "//"): any
// "key=value" comment line at the top, known key or not.
var legacyDirective = regexp.MustCompile(`^(?:#|//)\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$`)

// SyntaxImages returns the frontend images a Dockerfile's "# syntax="
// directive makes an engine pull, under the parser of any BuildKit
// version an engine may run: the one this agent links
// (parser.DetectSyntax: "#", "//" and JSON directives, a byte-order mark
// and a shebang line skipped, known directives only) and the older one of
// Docker 20.10 (any "#key=value" line at the top, the last syntax= winning;
// with and without a byte-order mark and a shebang line skipped). The
// engine takes the first space-separated word of the directive's value
// as the image, and so does SyntaxImages: "# syntax=IMAGE extra words"
// names IMAGE. Every image returned must be allowed, since which parser
// the engine runs is not known here.
func SyntaxImages(dockerfile []byte) []string {
	var out []string
	add := func(value string) {
		img := firstWord(value)
		for _, o := range out {
			if o == img {
				return
			}
		}
		out = append(out, img)
	}
	if _, value, _, ok := parser.DetectSyntax(dockerfile); ok {
		add(value)
	}
	for _, variant := range [][]byte{dockerfile, bytes.TrimPrefix(dockerfile, []byte("\xEF\xBB\xBF"))} {
		for _, skipShebang := range []bool{false, true} {
			sc := bufio.NewScanner(bytes.NewReader(variant))
			first := true
			for sc.Scan() {
				line := sc.Text()
				if first && skipShebang && strings.HasPrefix(line, "#!") {
					first = false
					continue
				}
				first = false
				m := legacyDirective.FindStringSubmatch(line)
				if m == nil {
					break
				}
				if strings.EqualFold(m[1], "syntax") {
					add(m[2])
				}
			}
		}
	}
	return out
}

// SyntaxArgImage returns the frontend image the BUILDKIT_SYNTAX build
// arg names, as the engine reads it: its first space-separated word.
func SyntaxArgImage(value string) string {
	return firstWord(strings.TrimSpace(value))
}

// firstWord is what BuildKit forwards a directive's value to:
// strings.SplitN(value, " ", 2)[0] (a space only, not a tab).
func firstWord(value string) string {
	w, _, _ := strings.Cut(value, " ")
	return w
}
