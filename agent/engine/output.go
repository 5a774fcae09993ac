package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"strings"

	"github.com/docker/docker/api/types/build"
	"github.com/docker/docker/pkg/jsonmessage"
	"github.com/moby/buildkit/client"
	"github.com/moby/buildkit/session"
	"github.com/moby/buildkit/session/filesync"

	"github.com/kilnbuild/kiln/proto/rules/outputs"
)

// Output is an export of a build's result besides the image (buildx
// --output, checked by proto/rules/outputs): Type local (the result's
// filesystem, as a directory), tar (the same as one tarball, with the
// owners the files have in the image) or oci or docker (an image
// tarball); Attrs are the attributes the rule
// package lets through ("name" for oci and docker). cacheonly exports
// nothing and never reaches an engine.
type Output struct {
	Type  string
	Attrs map[string]string
}

// The files a tar, oci or docker export writes into
// BuildKitOptions.OutputDir (local writes the result's files there).
const (
	OutputTarFile   = "output.tar"
	OutputImageFile = "image.tar"
)

// exportsFilesystem reports whether out is the result's filesystem
// (local, tar) rather than an image tarball (oci, docker).
func (out Output) exportsFilesystem() bool {
	return out.Type == outputs.TypeLocal || out.Type == outputs.TypeTar
}

// file is the file a tar, oci or docker export writes into the output
// directory.
func (out Output) file() string {
	if out.Type == outputs.TypeTar {
		return OutputTarFile
	}
	return OutputImageFile
}

// check refuses a type this package cannot export.
func (out Output) check() error {
	switch out.Type {
	case outputs.TypeLocal, outputs.TypeTar, outputs.TypeOCI, outputs.TypeDocker:
		return nil
	}
	return fmt.Errorf("output type=%q: the engine exports local, tar, oci or docker", out.Type)
}

// checkExport checks that o asks for an output an engine exports.
func checkExport(o BuildKitOptions) error {
	if o.Output == nil {
		return errors.New("export: no output")
	}
	return o.Output.check()
}

// imageNames are the names an oci or docker export gives the image: its
// name attribute (comma-separated, as buildx takes it), else the build's
// tags.
func (out Output) imageNames(tags []string) []string {
	if n := out.Attrs["name"]; n != "" {
		return strings.Split(n, ",")
	}
	return tags
}

// outputTarget is what the session serves the engine's exporter with: the
// directory of a local export (BuildKit's file-send target, as the docker
// CLI's `build -o type=local,dest=` and buildctl attach it), or the
// tarball of a tar, oci or docker one. Exporter id 0: the export is the solve's
// only exporter, and engines before BuildKit v0.13 send no id at all.
func outputTarget(o BuildKitOptions) session.Attachable {
	if o.Output == nil || o.OutputDir == "" {
		return nil
	}
	if o.Output.Type == outputs.TypeLocal {
		return filesync.NewFSSyncTarget(filesync.WithFSSyncDir(0, o.OutputDir))
	}
	name := filepath.Join(o.OutputDir, o.Output.file())
	return filesync.NewFSSyncTarget(filesync.WithFSSync(0, func(map[string]string) (io.WriteCloser, error) {
		return os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	}))
}

// logsOnly hands r a solve's log lines, not its steps: an export runs
// after the build, whose steps were reported already.
func logsOnly(r Reporter) func([]event) {
	return func(events []event) {
		for _, e := range events {
			switch e.kind {
			case eventLog:
				r.Log(e.step, e.line)
			case eventClipped:
				r.Clipped(e.step, e.line)
			}
		}
	}
}

// ExportOutput exports the result of the BuildKit build o, which has just
// succeeded on this engine as res, as o.Output into o.OutputDir (which
// must exist and be empty): o is solved again (every step a cache hit)
// with the daemon's exporter of o.Output's type, served through the
// session: local writes the result's filesystem into the directory, tar
// writes it as OutputTarFile, oci and docker write OutputImageFile.
// The Reporter hears the solve's log lines, not its steps.
func (b *BuildKitd) ExportOutput(ctx context.Context, o BuildKitOptions, res Result, r Reporter) error {
	if err := checkExport(o); err != nil {
		return err
	}
	if r == nil {
		r = nopReporter{}
	}
	ex := client.ExportEntry{Type: o.Output.Type}
	if !o.Output.exportsFilesystem() {
		ex.Attrs = map[string]string{}
		if names := o.Output.imageNames(o.Tags); len(names) > 0 {
			ex.Attrs["name"] = strings.Join(names, ",")
		}
		maps.Copy(ex.Attrs, o.Annotations)
	}
	o.NoCache, o.Pull = false, false
	if _, _, _, err := b.solve(ctx, o, []client.ExportEntry{ex}, o.CacheFrom, nil, logsOnly(r)); err != nil {
		return fmt.Errorf("export type=%s: %w", o.Output.Type, err)
	}
	return nil
}

// ExportOutput exports the result of the BuildKit build o, which has just
// succeeded on this engine as res, as o.Output into o.OutputDir (which
// must exist and be empty). local and tar build o again (every step a
// cache hit) with the /build API's outputs=[{"Type":"local"}] (or "tar"),
// as `docker build -o type=local,dest=DIR` does: the engine's exporter
// writes the result's filesystem into the directory, or as OutputTarFile,
// through the session.
// oci and docker save the image res made (Docker's BuildKit has no
// exporter for them before the containerd image store): docker as
// `docker save` writes it, named as the output or the build's tags say;
// oci converted to an OCI image layout. The Reporter hears the export's
// log lines, not its steps.
func (d *Docker) ExportOutput(ctx context.Context, o BuildKitOptions, res Result, r Reporter) error {
	if err := checkExport(o); err != nil {
		return err
	}
	if r == nil {
		r = nopReporter{}
	}
	if !o.Output.exportsFilesystem() {
		if err := d.saveImage(ctx, res.ImageID, *o.Output, o.Tags, filepath.Join(o.OutputDir, o.Output.file())); err != nil {
			return fmt.Errorf("export type=%s: %w", o.Output.Type, err)
		}
		return nil
	}
	if err := d.exportFilesystem(ctx, o, r); err != nil {
		return fmt.Errorf("export type=%s: %w", o.Output.Type, err)
	}
	return nil
}

// exportFilesystem builds o again with the engine's local or tar exporter
// into o.OutputDir. The build's settings are BuildKit's as they were (inline
// cache's build argument included), so every step is a cache hit.
func (d *Docker) exportFilesystem(ctx context.Context, o BuildKitOptions, r Reporter) error {
	o.NoCache, o.Pull = false, false
	cacheFrom, inlineCache, err := dockerCache(o)
	if err != nil {
		return err
	}
	args := o.BuildArgs
	if inlineCache {
		args = withInlineCache(args)
	}
	bs, err := d.startSession(ctx, o)
	if err != nil {
		return err
	}
	defer bs.close()

	buildID := newBuildID()
	resp, err := d.c.ImageBuild(ctx, nil, build.ImageBuildOptions{
		Version:       build.BuilderBuildKit,
		SessionID:     bs.s.ID(),
		BuildID:       buildID,
		RemoteContext: "client-session",
		Dockerfile:    bs.dockerfile,
		BuildArgs:     buildArgs(args),
		CacheFrom:     cacheFrom,
		Target:        o.Target,
		Labels:        o.Labels,
		NetworkMode:   o.Network,
		ExtraHosts:    o.ExtraHosts,
		ShmSize:       o.ShmSize,
		Ulimits:       dockerUlimits(o.Ulimits),
		Platform:      o.Platform,
		Outputs:       []build.ImageBuildOutput{{Type: o.Output.Type, Attrs: map[string]string{}}},
	})
	if err != nil {
		return d.requestError(ctx, err)
	}
	defer resp.Body.Close()
	stopWatch := d.cancelOnDone(ctx, buildID)
	p := newTraceParser()
	report := logsOnly(r)
	var streamMsg string
	streamErr := decodeMessages(resp.Body, func(m *jsonmessage.JSONMessage) error {
		switch {
		case m.Error != nil:
			streamMsg = m.Error.Message
		case m.ID == traceMessageID && m.Aux != nil:
			st, err := decodeTrace(m)
			if err != nil {
				return err
			}
			if st != nil {
				p.each(st, report)
			}
		}
		return nil
	})
	report(p.finish())
	stopWatch()
	switch {
	case ctx.Err() != nil:
		return ctx.Err()
	case p.failure != nil:
		if streamMsg != "" && p.failure.Step == 0 {
			p.failure.Message = streamMsg
		}
		return p.failure
	case streamMsg != "":
		return &BuildError{Message: streamMsg}
	case streamErr != nil:
		return fmt.Errorf("reading the engine's progress: %w", streamErr)
	}
	return nil
}
