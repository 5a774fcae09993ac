package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/kilnbuild/kiln/proto/rules/buildflags"
	"github.com/kilnbuild/kiln/sdk/internal/progress"
	"github.com/kilnbuild/kiln/sdk/kiln"
)

// cancelTimeout bounds the Cancel call made on the first interrupt.
const cancelTimeout = 15 * time.Second

// runBuild packs, uploads, starts and follows one build and returns the
// exit code.
func (a *App) runBuild(ctx context.Context, o *buildOptions) int {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pr := a.newPrinter(ctx, o.progress, o.debug)
	defer pr.Close()

	// The client is closed last, after the interrupt watch stopped: a
	// Cancel it sent may still be running until then.
	var client *kiln.Client
	defer func() {
		if client != nil {
			client.Close()
		}
	}()
	watch := &buildInterrupts{printer: pr, cancel: cancel}
	stop := watch.start(ctx, a.Interrupts)
	defer stop()

	packOpts := []kiln.PackOption{kiln.WithHashProgress(func(p kiln.ContextProgress) {
		pr.ContextProgress("Hashing", p.Files, p.TotalFiles, p.Bytes, p.TotalBytes)
	})}
	if o.dockerfileStdin {
		data, err := readDockerfileStdin(a.Stdin)
		if err != nil {
			pr.Errorf("%v", err)
			return ExitUsage
		}
		packOpts = append(packOpts, kiln.WithDockerfile(data))
		if o.spec.GitContext != "" {
			o.spec.DockerfileInline = data // no context to send it with
		}
	}
	bc, named, err := o.packContexts(ctx, packOpts)
	if err != nil {
		return a.fail(pr, o, watch, err)
	}

	opts := append([]kiln.Option{kiln.WithDialOptions(o.trace.dialOptions()...)}, o.opts...)
	client, err = kiln.Dial(ctx, o.gateway, opts...)
	if err != nil {
		pr.Errorf("%v", err)
		return ExitUsage
	}
	watch.attach(client)

	for _, c := range append([]*kiln.Context{bc}, slices.Collect(maps.Values(named))...) {
		if c == nil {
			continue // a Git URL context: the farm fetches it
		}
		uploaded, err := client.UploadContext(ctx, c, kiln.WithUploadProgress(func(p kiln.ContextProgress) {
			pr.ContextProgress("Uploading", p.Files, p.TotalFiles, p.Bytes, p.TotalBytes)
		}))
		if err != nil {
			return a.fail(pr, o, watch, err)
		}
		pr.ContextSummary(uploaded.Files, uploaded.Bytes, uploaded.UploadedBytes)
	}

	spec := o.spec
	dockerfile := spec.DockerfileInline
	if bc != nil {
		dockerfile = bc.DockerfileInline()
	}
	if dockerfile == nil && bc != nil {
		dockerfile, _ = os.ReadFile(filepath.Join(bc.Dir(), bc.Dockerfile())) // PackContext has read it
	}
	creds, err := lookupRegistryCredentials(ctx, registryHosts(spec, dockerfile), a.lookupEnv(), runCredentialHelper)
	if err != nil {
		pr.Errorf("%v", err)
		return ExitUsage
	}
	b, err := client.Build(ctx, kiln.BuildRequest{
		Spec: spec, Context: bc, BuildContexts: named, IdempotencyKey: o.idempotencyKey, Secrets: o.secrets, SSH: o.ssh, RegistryAuth: creds, Timeout: o.timeout,
	})
	if err != nil {
		return a.fail(pr, o, watch, err)
	}
	watch.started(b.ID())
	o.trace.buildStarted(b.ID())
	if o.detach {
		cancel() // stop following: the farm runs the build without us
		pr.Close()
		fmt.Fprintln(a.Stdout, b.ID())
		return ExitOK
	}

	final, code := a.followStarted(ctx, b, pr, watch, o.gateway)
	if code != ExitOK {
		return code
	}
	if spec.GetCall() != "" {
		pr.Close() // the answer follows the progress
		return a.printCall(final)
	}
	if o.metadataFile != "" {
		if err := writeMetadataFile(o.metadataFile, final, spec.GetTags()); err != nil {
			pr.Errorf("%v", err)
			return ExitFailed
		}
	}
	if o.iidFile != "" {
		if err := writeIIDFile(o.iidFile, final); err != nil {
			pr.Errorf("%v", err)
			return ExitFailed
		}
	}
	if err := a.downloadOutput(ctx, client, final, o.output, pr); err != nil {
		pr.Errorf("%v", err)
		return ExitFailed
	}
	return ExitOK
}

// fail reports err, which ended the build's preparation or start, and
// returns its exit code: ExitInterrupted when an interrupt stopped it.
func (a *App) fail(pr *progress.Printer, o *buildOptions, w *buildInterrupts, err error) int {
	if w.stopped() {
		pr.Errorf("interrupted before the build started")
		return ExitInterrupted
	}
	code := ExitCode(err)
	if code == ExitUnreachable {
		pr.Errorf("cannot reach the kiln gateway at %s: %v", o.gateway, err)
		return code
	}
	pr.Errorf("%v", err)
	return code
}

// readDockerfileStdin reads -f -'s Dockerfile.
func readDockerfileStdin(r io.Reader) ([]byte, error) {
	if r == nil {
		r = strings.NewReader("")
	}
	data, err := io.ReadAll(io.LimitReader(r, buildflags.MaxDockerfileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("-f -: reading the Dockerfile from standard input: %w", err)
	}
	if len(data) == 0 {
		return nil, errors.New("-f -: standard input is empty: pipe the Dockerfile in (kiln build -f - PATH < Dockerfile)")
	}
	if len(data) > buildflags.MaxDockerfileBytes {
		return nil, fmt.Errorf("-f -: the Dockerfile on standard input is over %d bytes", buildflags.MaxDockerfileBytes)
	}
	return data, nil
}
