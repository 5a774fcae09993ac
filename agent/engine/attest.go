package engine

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/distribution/reference"
	"github.com/moby/buildkit/client"
	"github.com/moby/buildkit/exporter/containerimage/exptypes"
	gateway "github.com/moby/buildkit/frontend/gateway/client"
	"github.com/moby/buildkit/frontend/subrequests/lint"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
)

// Descriptor is an OCI descriptor of what a build pushed: the image's
// manifest, or the index holding it and its attestations.
type Descriptor struct {
	MediaType string
	Digest    string // "sha256:…"
	Size      int64
}

// refuseOnDocker refuses what only a standalone buildkitd does: Docker's
// /build API passes neither exporter annotations, attestation attributes
// nor request ids to its BuildKit (the gateway and the scheduler keep such
// builds off Docker agents; this is the engine's own guard).
func refuseOnDocker(o BuildKitOptions) error {
	var what string
	switch {
	case len(o.Annotations) > 0:
		what = "--annotation"
	case len(o.Attests) > 0:
		what = "--provenance and --sbom"
	case o.Call != "":
		what = "--call and --check"
	default:
		return nil
	}
	return &BuildError{Message: what + " need a standalone BuildKit agent (kiln-agent --engine buildkit://…): a Docker engine's build API does not pass them to its BuildKit"}
}

// imageDescriptor reads the pushed image's descriptor from the image
// exporter's response.
func imageDescriptor(resp map[string]string) (Descriptor, error) {
	enc := resp[exptypes.ExporterImageDescriptorKey]
	if enc == "" {
		return Descriptor{}, errors.New("the daemon's response has no image descriptor")
	}
	dt, err := base64.StdEncoding.DecodeString(enc)
	if err != nil {
		return Descriptor{}, fmt.Errorf("the daemon's image descriptor: %w", err)
	}
	var d ocispecs.Descriptor
	if err := json.Unmarshal(dt, &d); err != nil {
		return Descriptor{}, fmt.Errorf("the daemon's image descriptor: %w", err)
	}
	return Descriptor{MediaType: d.MediaType, Digest: d.Digest.String(), Size: d.Size}, nil
}

// Describe asks the registry, through the engine (GET
// /distribution/{name}/json), for the descriptor of the manifest tag names:
// its media type, digest and size as the registry serves them. The
// credentials are the build's for the tag's registry, else this host's, as
// Push takes them.
func (d *Docker) Describe(ctx context.Context, tag string, creds Credentials) (Descriptor, error) {
	ref, err := reference.ParseNormalizedNamed(tag)
	if err != nil {
		return Descriptor{}, fmt.Errorf("describe %q: %w", tag, err)
	}
	auth, err := buildAuth(creds, reference.Domain(ref))
	if err != nil {
		return Descriptor{}, fmt.Errorf("describe %s: %w", tag, err)
	}
	di, err := d.c.DistributionInspect(ctx, reference.TagNameOnly(ref).String(), auth)
	if err != nil {
		return Descriptor{}, fmt.Errorf("describe %s: %w", tag, err)
	}
	return Descriptor{MediaType: di.Descriptor.MediaType, Digest: di.Descriptor.Digest.String(), Size: di.Descriptor.Size}, nil
}

// call asks the Dockerfile frontend o.Call (a request id such as
// "frontend.lint") instead of building, as buildx --call does: a gateway
// Build whose one Solve carries the request id, over the same session as a
// build (context, Dockerfile, secrets, credentials). Nothing is exported.
// For a check, the result holds the text buildx prints and the warnings'
// count; a Dockerfile the frontend cannot parse fails with *BuildError.
func (b *BuildKitd) call(ctx context.Context, o BuildKitOptions, r Reporter) (BuildKitResult, error) {
	if r == nil {
		r = nopReporter{}
	}
	bs, err := startSession(ctx, o, b.c.Dialer())
	if err != nil {
		return BuildKitResult{}, err
	}
	defer bs.close()
	attrs := frontendAttrs(o, bs.dockerfile)
	attrs["requestid"] = o.Call
	opt := client.SolveOpt{
		SharedKey:             o.SharedKey,
		SharedSession:         bs.s,
		SessionPreInitialized: true,
		Internal:              true, // as solve: no build history
	}
	var meta map[string][]byte
	statusCh := make(chan *client.SolveStatus)
	done := make(chan error, 1)
	go func() {
		_, err := b.c.Build(ctx, opt, "kiln", func(ctx context.Context, c gateway.Client) (*gateway.Result, error) {
			res, err := c.Solve(ctx, gateway.SolveRequest{Frontend: "dockerfile.v0", FrontendOpt: attrs})
			if err != nil {
				return nil, err
			}
			meta = res.Metadata
			return gateway.NewResult(), nil
		}, statusCh) // closes statusCh when it returns
		done <- err
	}()
	report := reportTo(r)
	p := newTraceParser()
	for st := range statusCh {
		for _, sr := range st.Marshal() {
			p.each(sr, report)
		}
	}
	report(p.finish())
	err = <-done
	if ctx.Err() != nil {
		return BuildKitResult{}, fmt.Errorf("%s cancelled: %w", o.Call, ctx.Err())
	}
	if err != nil {
		if engineDown(err) {
			return BuildKitResult{}, fmt.Errorf("%s on %s: %w", o.Call, b.addr, err)
		}
		return BuildKitResult{}, &BuildError{Message: solveMessage(err)}
	}
	return callResult(o.Call, meta)
}

// callResult is what a frontend request answered, as buildx prints it.
func callResult(requestID string, meta map[string][]byte) (BuildKitResult, error) {
	if requestID != lint.SubrequestLintDefinition.Name {
		txt, ok := meta["result.txt"]
		if !ok {
			return BuildKitResult{}, &BuildError{Message: fmt.Sprintf("the Dockerfile frontend does not answer %s (it may predate it: use a newer # syntax= frontend)", requestID)}
		}
		return BuildKitResult{CallOutput: string(txt)}, nil
	}
	dt, ok := meta["result.json"]
	if !ok {
		return BuildKitResult{}, &BuildError{Message: "the Dockerfile frontend does not run checks (it predates them: use a newer # syntax= frontend)"}
	}
	var lr lint.LintResults
	if err := json.Unmarshal(dt, &lr); err != nil {
		return BuildKitResult{}, fmt.Errorf("the frontend's check result: %w", err)
	}
	var out bytes.Buffer
	switch n := len(lr.Warnings); n {
	case 0:
	case 1:
		out.WriteString("Check complete, 1 warning has been found!\n")
	default:
		fmt.Fprintf(&out, "Check complete, %d warnings have been found!\n", n)
	}
	if err := lr.PrintTo(&out, nil); err != nil {
		return BuildKitResult{}, fmt.Errorf("the frontend's check result: %w", err)
	}
	if lr.Error != nil {
		var e bytes.Buffer
		lr.PrintErrorTo(&e, nil)
		return BuildKitResult{CallOutput: out.String(), CheckWarnings: len(lr.Warnings)}, &BuildError{Message: e.String()}
	}
	if len(lr.Warnings) == 0 {
		out.WriteString("Check complete, no warnings found.\n")
	}
	return BuildKitResult{CallOutput: out.String(), CheckWarnings: len(lr.Warnings)}, nil
}
