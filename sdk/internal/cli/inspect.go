package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"

	"github.com/spf13/pflag"
	"google.golang.org/protobuf/encoding/protojson"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

func newInspectFlagSet(conn *connFlags) *pflag.FlagSet {
	fs := pflag.NewFlagSet("inspect", pflag.ContinueOnError)
	fs.SortFlags = false
	conn.register(fs)
	return fs
}

var inspectHelp = helpText{
	usage: "kiln inspect [OPTIONS] BUILD...",
	about: `Print the records of builds as a JSON array, as the farm keeps them: the
spec, state, attempts with their agents and why each ended, the result
(image id, pushed digests, steps and cached steps), timings, the error,
and the trace context. Field names are protobuf JSON's (createdAt).

Secret values never appear: the spec's secrets and registry credentials
are shown by id and key id only. Their sealed bytes, ciphertext only the
farm's agents can open, are left out too.`,
	examples: `kiln inspect b06h4trcbne1xgcy6kxmx93yha4
kiln inspect b06h4trcbne1xgcy6kxmx93yha4 | jq -r '.[0].attempts[] | "\(.agent) \(.reason)"'
kiln inspect $(kiln ls --state failed --format '{{.ID}}')`,
	exits: []exitStatus{
		{ExitOK, "printed every build"},
		{ExitFailed, "a build was not found (it does not exist or is another tenant's), or another error; the builds found are printed"},
		exitUsageStatus, exitUnreachableStatus,
	},
}

// inspect is `kiln inspect`.
func (a *App) inspect(ctx context.Context, args []string) int {
	var cf connFlags
	fs := newInspectFlagSet(&cf)
	if code, done := a.parseFlags("inspect", fs, inspectHelp, args); done {
		return code
	}
	if fs.NArg() == 0 {
		return a.usageErrorf("inspect", `"kiln inspect" needs at least one BUILD id ('kiln ls' lists them)`)
	}
	client, conn, code := a.dial(ctx, "inspect", fs, &cf, "")
	if client == nil {
		return code
	}
	defer client.Close()
	code = ExitOK
	var builds []*kilnv1.Build
	for _, id := range fs.Args() {
		b, err := client.Get(ctx, id)
		if err != nil {
			c := reportFarmError(a.Stderr, conn.gateway, id, err)
			if c == ExitUnreachable {
				return c
			}
			code = max(code, c)
			continue
		}
		builds = append(builds, b)
	}
	if err := writeRecords(a.Stdout, builds); err != nil {
		fmt.Fprintf(a.Stderr, "ERROR: %v\n", err)
		return ExitFailed
	}
	return code
}

// writeRecords writes builds to w as an indented JSON array of their
// protobuf JSON, without sealed values (redactSealed).
func writeRecords(w io.Writer, builds []*kilnv1.Build) error {
	var arr bytes.Buffer
	arr.WriteByte('[')
	for i, b := range builds {
		if i > 0 {
			arr.WriteByte(',')
		}
		raw, err := protojson.Marshal(redactSealed(b))
		if err != nil {
			return fmt.Errorf("encoding build %s: %w", b.GetId(), err)
		}
		arr.Write(raw)
	}
	arr.WriteByte(']')
	// Indent also drops the spaces protojson places at random.
	var out bytes.Buffer
	if err := json.Indent(&out, arr.Bytes(), "", "  "); err != nil {
		return fmt.Errorf("encoding builds: %w", err)
	}
	out.WriteByte('\n')
	_, err := w.Write(out.Bytes())
	return err
}
