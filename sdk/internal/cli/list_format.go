package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"text/template"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

// defaultListTable is the table `kiln ls` prints without --format, as a
// --format template.
const defaultListTable = "table {{.ID}}\t{{.State}}\t{{.Repository}}\t{{short .Tags}}\t{{.Agent}}\t{{.Queued}}\t{{.Duration}}\t{{.Cached}}"

// listFormat is how a listing prints builds, parsed from --format as
// docker does: "table" (the default columns), "json" (one build record
// per line), a Go template run for each build ('{{.ID}}'), or "table "
// followed by a template, which prints aligned columns under a header.
type listFormat struct {
	json bool
	tmpl *template.Template
	// table aligns the template's tab-separated cells and prints a header.
	table bool
}

// templateFuncs are the functions a --format template may call, as in
// docker's: json, join, lower, upper, truncate, plus short (see shortList).
var templateFuncs = template.FuncMap{
	"json": func(v any) (string, error) {
		b, err := json.Marshal(v)
		return string(b), err
	},
	"join":  strings.Join,
	"lower": strings.ToLower,
	"upper": strings.ToUpper,
	"truncate": func(s string, n int) string {
		if r := []rune(s); len(r) > n {
			return string(r[:n])
		}
		return s
	},
	"short": shortList,
}

// parseListFormat parses --format of a listing of builds; table is the
// default table's template.
func parseListFormat(format, table string) (listFormat, error) {
	return parseRowFormat(format, table, newBuildRow(&kilnv1.Build{}, time.Time{}))
}

// parseRowFormat parses --format of a listing whose rows are like empty
// (buildRow, agentRow); table is the default table's template. A template
// is tried on empty so that a field it names that a row does not have is
// a usage error before anything is asked of the farm.
func parseRowFormat(format, table string, empty any) (listFormat, error) {
	switch format {
	case "", "table":
		format = table
	case "json":
		return listFormat{json: true}, nil
	}
	f := listFormat{}
	if rest, ok := strings.CutPrefix(format, "table "); ok {
		f.table, format = true, rest
	}
	// Like docker, a literal \t or \n in the flag's value means a tab or a
	// newline: shells pass them through single quotes as two characters.
	format = strings.NewReplacer(`\t`, "\t", `\n`, "\n").Replace(format)
	tmpl, err := template.New("format").Funcs(templateFuncs).Parse(format)
	if err != nil {
		return listFormat{}, &usageError{msg: fmt.Sprintf("invalid --format: %v", err)}
	}
	// The empty build's missing parts (nil pointers) are no mistake; a
	// field that does not exist or a function called wrongly is.
	if err := tmpl.Execute(io.Discard, empty); err != nil && !strings.Contains(err.Error(), "nil pointer evaluating") {
		return listFormat{}, &usageError{msg: fmt.Sprintf("invalid --format: %v", err)}
	}
	f.tmpl = tmpl
	return f, nil
}

// write prints builds to w in the format, as of time now. Records are
// printed without their sealed values (see redactSealed).
func (f listFormat) write(w io.Writer, builds []*kilnv1.Build, now time.Time) error {
	return f.writeRows(w, headerRow, len(builds),
		func(i int) any { return newBuildRow(redactSealed(builds[i]), now) },
		func(i int) proto.Message { return redactSealed(builds[i]) })
}

// writeRows prints n rows to w in the format: row(i) through the template
// (header, the row holding the column names, first for a table), or
// record(i) as a line of JSON.
func (f listFormat) writeRows(w io.Writer, header any, n int, row func(int) any, record func(int) proto.Message) error {
	if f.json {
		for i := range n {
			line, err := compactJSON(record(i))
			if err != nil {
				return err
			}
			fmt.Fprintf(w, "%s\n", line)
		}
		return nil
	}
	out := w
	var tw *tabwriter.Writer
	if f.table {
		tw = tabwriter.NewWriter(w, 0, 4, 3, ' ', 0)
		out = tw
		// A template that reaches into the record has no header for that
		// cell: the header row has no record, so such a header is skipped.
		var h bytes.Buffer
		if err := f.tmpl.Execute(&h, header); err == nil {
			fmt.Fprintf(tw, "%s\n", h.Bytes())
		}
	}
	for i := range n {
		var line bytes.Buffer
		if err := f.tmpl.Execute(&line, row(i)); err != nil {
			return fmt.Errorf("--format: %w", err)
		}
		fmt.Fprintf(out, "%s\n", line.Bytes())
	}
	if tw != nil {
		return tw.Flush()
	}
	return nil
}

// compactJSON is m's protojson on one line, with protojson's randomly
// placed spaces removed so the output is stable.
func compactJSON(m proto.Message) ([]byte, error) {
	raw, err := protojson.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encoding %s: %w", m.ProtoReflect().Descriptor().Name(), err)
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		return nil, fmt.Errorf("encoding %s: %w", m.ProtoReflect().Descriptor().Name(), err)
	}
	return buf.Bytes(), nil
}
