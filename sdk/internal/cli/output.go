package cli

import (
	"context"
	"fmt"
	"os"

	"golang.org/x/term"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules/outputs"
	"github.com/kilnbuild/kiln/sdk/internal/progress"
	"github.com/kilnbuild/kiln/sdk/kiln"
)

// loadRefusal is what --load says.
const loadRefusal = "--load is not supported: a CI job has no engine to load into, the farm builds elsewhere: use --push and docker pull, or --output type=docker,dest=- | docker load"

// applyOutput puts --output's plan into spec: type=registry and
// type=image,push=true are --push, the one other output goes to the farm
// without its dest.
func (f *runFlags) applyOutput(values []string, spec *kilnv1.BuildSpec) error {
	p, err := outputs.ParsePlan(values)
	if err != nil {
		return &usageError{msg: err.Error()}
	}
	f.output = p
	spec.Push = spec.Push || p.Push
	if p.Output != nil {
		spec.Outputs = []*kilnv1.Output{p.Output}
	}
	return nil
}

// checkOutputOptions refuses the combinations of --output with other
// flags that cannot work: standard output taken twice, an output after a
// build --detach does not wait for, an image tarball of several platforms.
func checkOutputOptions(o *buildOptions, stdoutIsTerminal bool) *usageError {
	p := o.output
	if p.Output == nil {
		return nil
	}
	if p.Dest == outputs.Stdout {
		switch {
		case stdoutIsTerminal:
			return &usageError{msg: fmt.Sprintf("--output type=%s,dest=-: refusing to write the output to a terminal; redirect standard output or give dest=FILE", p.Output.Type)}
		case o.progress == progress.Quiet || o.progress == progress.JSON || o.progress == progress.RawJSON:
			return &usageError{msg: fmt.Sprintf("--output dest=- writes the output to standard output, which --progress %s uses too: give dest=FILE or another --progress", o.progress)}
		}
	}
	if o.detach && p.Output.Type != outputs.TypeCacheOnly {
		return &usageError{msg: "--output is downloaded when the build succeeds, which --detach does not wait for: run 'kiln output ID --output ...' once it has"}
	}
	if err := outputs.CheckPlatforms(o.spec.GetOutputs(), len(o.spec.GetPlatforms())); err != nil {
		return &usageError{msg: err.Error()}
	}
	return nil
}

// stdoutIsTerminal reports whether the App's stdout is a terminal.
func (a *App) stdoutIsTerminal() bool {
	f, ok := a.Stdout.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// downloadOutput writes the output of b, which succeeded, where plan
// says, and reports it on stderr:
//
//	exporting output to DIR: N files, M bytes (K fetched, P already in place)
func (a *App) downloadOutput(ctx context.Context, client *kiln.Client, b *kilnv1.Build, plan outputs.Plan, pr *progress.Printer) error {
	if plan.Output == nil || plan.Output.Type == outputs.TypeCacheOnly {
		return nil
	}
	to := kiln.OutputTarget{Path: plan.Dest, Type: plan.Output.Type}
	where := plan.Dest
	if plan.Dest == outputs.Stdout {
		to.Path, to.Writer = "", a.Stdout
		where = "standard output"
	}
	st, err := client.DownloadOutput(ctx, b, to, kiln.WithDownloadProgress(func(p kiln.ContextProgress) {
		pr.ContextProgress("Downloading", p.Files, p.TotalFiles, p.Bytes, p.TotalBytes)
	}))
	if err != nil {
		resume := ""
		if plan.Dest != outputs.Stdout {
			resume = fmt.Sprintf(" (resume with: kiln output %s --output %s,dest=%s)", b.GetId(), outputs.String(plan.Output), plan.Dest)
		}
		return fmt.Errorf("exporting output to %s: %w%s", where, err, resume)
	}
	line := fmt.Sprintf("exporting output to %s: %d files, %d bytes (%d fetched", where, st.Files, st.Bytes, st.FetchedBytes)
	if st.Present > 0 {
		line += fmt.Sprintf(", %d files already in place", st.Present)
	}
	if st.Resumed > 0 {
		line += fmt.Sprintf(", %d resumed", st.Resumed)
	}
	pr.Infof("%s)", line)
	return nil
}
