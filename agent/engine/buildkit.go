package engine

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	gofs "io/fs"
	"net"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"

	"github.com/docker/cli/cli/config"
	"github.com/docker/cli/cli/config/configfile"
	"github.com/docker/docker/api/types/build"
	"github.com/docker/docker/pkg/jsonmessage"
	controlapi "github.com/moby/buildkit/api/services/control"
	"github.com/moby/buildkit/session"
	"github.com/moby/buildkit/session/auth/authprovider"
	"github.com/moby/buildkit/session/filesync"
	"github.com/moby/buildkit/session/secrets/secretsprovider"
	"github.com/tonistiigi/fsutil"
	fstypes "github.com/tonistiigi/fsutil/types"
	sshagent "golang.org/x/crypto/ssh/agent"
	"google.golang.org/protobuf/proto"
)

// BuildKitOptions are a BuildKit-mode build's inputs besides the classic
// ones: the context is a directory the engine syncs from the agent.
type BuildKitOptions struct {
	BuildOptions
	// ContextDir holds the build context. The engine copies it through the
	// session's file sync and keeps the copy under SharedKey, so a later
	// build with the same SharedKey transfers only the files whose stat
	// (size, mode, mtime) changed.
	ContextDir string
	// SharedKey names the engine's copy of the context: stable for one
	// context directory, different for different ones.
	SharedKey string
	// Secrets are served to RUN --mount=type=secret steps by the session,
	// by id. They are never written anywhere.
	Secrets map[string][]byte
	// SSH are served to RUN --mount=type=ssh[,id=ID] steps by the
	// session's ssh forwarding, by ssh id ("default" without id=), each
	// read-only: a step can list the keys and sign with them, never read
	// them. None: the session offers no ssh forwarding, and such a step
	// fails as under docker build without --ssh.
	SSH map[string]sshagent.Agent
	// DockerfileData, when not nil, is the Dockerfile the engine gets in
	// place of the context's (the agent's policy rewrites cache mount ids
	// in it, or the build sent it apart from the context), served from a
	// temporary directory under Dockerfile's base name; the context need
	// not hold a Dockerfile then, and the context directory is not changed.
	DockerfileData []byte
	// CacheFrom are caches to import from; CacheTo are caches to export to
	// as part of the build (checked by proto/rules/cacheopt; an engine
	// without a type's Feature refuses it with a *BuildError saying which
	// engines have it).
	CacheFrom, CacheTo []CacheOption
	// Push asks an engine with FeaturePushInBuild to push every tag as
	// part of the build (BuildKitResult.Pushed); other engines ignore it
	// and the agent pushes with Push.
	Push bool
	// Output, when set, is what ExportOutput exports the build's result
	// as, into OutputDir (an empty directory of the agent's): the
	// session serves it to the engine's exporter (outputTarget). BuildKit
	// ignores both.
	Output    *Output
	OutputDir string
	// Annotations are image exporter attributes ("annotation-manifest.KEY",
	// from proto/rules/annotations.ExporterAttrs), Attests frontend
	// attributes ("attest:provenance" → "mode=max", from
	// proto/rules/attest.Attr), and Call a frontend request id
	// ("frontend.lint", from proto/rules/attest.RequestID) asked instead of
	// a build. Engines without FeatureAnnotations, FeatureAttestations or
	// FeatureCall refuse them with a *BuildError.
	Annotations, Attests map[string]string
	Call                 string
	// NamedContexts are the build's --build-context values: the session
	// serves each local one's directory, and the frontend gets
	// "context:NAME" attributes for all (namedContextAttrs). Engines
	// without FeatureNamedContexts refuse them with a *BuildError.
	NamedContexts []NamedContext
}

// BuildKitResult adds what only a BuildKit build measures.
type BuildKitResult struct {
	Result
	// ContextBytes counts the bytes of context files the engine read
	// through the session: what the engine's copy lacked.
	ContextBytes int64
	// Pushed are the tags the engine pushed as part of the build
	// (FeaturePushInBuild with BuildKitOptions.Push), in Tags' order.
	Pushed []Pushed
	// Descriptor is what the engine pushed (FeaturePushInBuild): the
	// manifest, or the index of the image and its attestations. CallOutput
	// is what a BuildKitOptions.Call answered, as buildx prints it, and
	// CheckWarnings the lint warnings a check found.
	Descriptor    Descriptor
	CallOutput    string
	CheckWarnings int
}

// Builders reports the builders the engine offers, preferred first:
// BuildKit (POST /build with version=2 and a session) is there on Linux
// engines speaking API 1.39 or later, whatever the engine's default
// (Docker 20.10 answers /_ping with Builder-Version 1 unless its daemon.json
// turns BuildKit on, yet builds with it when asked).
func (d *Docker) Builders(ctx context.Context) ([]string, error) {
	p, err := d.c.Ping(ctx)
	if err != nil {
		return nil, fmt.Errorf("docker engine %s: ping: %w", d.host, err)
	}
	if p.BuilderVersion == build.BuilderBuildKit || (p.OSType == "linux" && versionAtLeast(p.APIVersion, "1.39")) {
		return []string{"buildkit", "classic"}, nil
	}
	return []string{"classic"}, nil
}

// versionAtLeast compares API versions "1.41" ≥ "1.39".
func versionAtLeast(v, min string) bool {
	var a, b, c, e int
	if _, err := fmt.Sscanf(v, "%d.%d", &a, &b); err != nil {
		return false
	}
	if _, err := fmt.Sscanf(min, "%d.%d", &c, &e); err != nil {
		return false
	}
	return a > c || (a == c && b >= e)
}

// BuildKit builds an image with the engine's BuildKit, the way the docker
// CLI does with DOCKER_BUILDKIT=1: a session (a gRPC server the engine
// dials back through POST /session) serves the context and the Dockerfile by
// file sync, the secrets, and registry credentials from this host's Docker
// config; POST /build with version=2 names the session; the engine's
// progress arrives as "moby.buildkit.trace" messages that a traceParser turns
// into step events.
//
// A build that fails returns *BuildError. Cancelling ctx cancels the build
// on the engine (POST /build/cancel), which stops its containers, and Build
// returns ctx's error.
func (d *Docker) BuildKit(ctx context.Context, o BuildKitOptions, r Reporter) (BuildKitResult, error) {
	if r == nil {
		r = nopReporter{}
	}
	if err := refuseOnDocker(o); err != nil {
		return BuildKitResult{}, err
	}
	if err := refuseNamedContextsOnDocker(o); err != nil {
		return BuildKitResult{}, err
	}
	cacheFrom, inlineCache, err := dockerCache(o)
	if err != nil {
		return BuildKitResult{}, err
	}
	if err := d.checkStepLimits(ctx, o.BuildOptions); err != nil {
		return BuildKitResult{}, err
	}
	args := o.BuildArgs
	if inlineCache {
		args = withInlineCache(args)
	}
	bs, err := d.startSession(ctx, o)
	if err != nil {
		return BuildKitResult{}, err
	}
	defer bs.close()

	buildID := newBuildID()
	resp, err := d.c.ImageBuild(ctx, nil, build.ImageBuildOptions{
		Version:       build.BuilderBuildKit,
		SessionID:     bs.s.ID(),
		BuildID:       buildID,
		RemoteContext: "client-session",
		Dockerfile:    bs.dockerfile,
		Tags:          o.Tags,
		BuildArgs:     buildArgs(args),
		CacheFrom:     cacheFrom,
		Target:        o.Target,
		Labels:        o.Labels,
		NoCache:       o.NoCache,
		PullParent:    o.Pull,
		NetworkMode:   o.Network,
		ExtraHosts:    o.ExtraHosts,
		ShmSize:       o.ShmSize,
		Ulimits:       dockerUlimits(o.Ulimits),
		Platform:      o.Platform,
	})
	if err != nil {
		return BuildKitResult{}, d.requestError(ctx, err)
	}
	defer resp.Body.Close()

	// Cancelling ctx closes the response, but BuildKit builds on until it is
	// told to stop: tell it.
	stopWatch := d.cancelOnDone(ctx, buildID)

	p := newTraceParser()
	report := reportTo(r)
	var (
		imageID   string
		streamMsg string // the error the stream ended with
		empty     int    // progress messages in a row that carried nothing
		stuck     bool   // the engine's progress is lost (stuckProgress)
	)
	streamErr := decodeMessages(resp.Body, func(m *jsonmessage.JSONMessage) error {
		switch {
		case m.Error != nil:
			streamMsg = m.Error.Message
		case m.ID == traceMessageID && m.Aux != nil:
			st, err := decodeTrace(m)
			if err != nil {
				return err
			}
			if st == nil {
				if empty++; empty == stuckProgress {
					stuck = true
					r.Log(0, stuckProgressLine)
				}
				if stuck && imageID != "" {
					return errProgressStuck
				}
				return nil
			}
			empty = 0
			p.each(st, report)
		case m.ID == "moby.image.id" && m.Aux != nil:
			var res struct{ ID string }
			if err := json.Unmarshal(*m.Aux, &res); err == nil {
				imageID = res.ID
			}
			if stuck {
				return errProgressStuck
			}
		}
		return nil
	})
	if errors.Is(streamErr, errProgressStuck) {
		streamErr = nil // the build is done; its stream would never end
	}
	report(p.finish())
	stopWatch() // once ctx ended, returns when the engine has been told
	if ctx.Err() != nil {
		return BuildKitResult{}, fmt.Errorf("build cancelled at step %d: %w", p.next, ctx.Err())
	}
	if p.failure != nil {
		if streamMsg != "" && p.failure.Step == 0 {
			p.failure.Message = streamMsg
		}
		return BuildKitResult{}, p.failure
	}
	if streamMsg != "" {
		return BuildKitResult{}, &BuildError{Message: streamMsg}
	}
	if streamErr != nil {
		return BuildKitResult{}, fmt.Errorf("build on %s: reading the engine's progress: %w", d.host, streamErr)
	}
	if imageID == "" {
		return BuildKitResult{}, fmt.Errorf("build on %s: the engine's progress ended without an image ID", d.host)
	}
	return BuildKitResult{
		Result:       Result{ImageID: imageID, Steps: p.steps, CachedSteps: p.cachedSteps},
		ContextBytes: bs.counter.n.Load(),
	}, nil
}

// checkStepLimits refuses --shm-size and --ulimit on an engine whose
// BuildKit ignores them (Docker before 23, API 1.42), rather than build
// without them.
func (d *Docker) checkStepLimits(ctx context.Context, o BuildOptions) error {
	if o.ShmSize == 0 && len(o.Ulimits) == 0 {
		return nil
	}
	p, err := d.c.Ping(ctx)
	if err != nil {
		return fmt.Errorf("docker engine %s: ping: %w", d.host, err)
	}
	if versionAtLeast(p.APIVersion, "1.42") {
		return nil
	}
	return &BuildError{Message: fmt.Sprintf(
		"--shm-size and --ulimit need Docker 23 or later to build with BuildKit: this agent's engine speaks API %s, whose BuildKit ignores them. Build with --builder classic, or on an agent with a standalone BuildKit engine",
		p.APIVersion)}
}

// reportTo returns a function handing a traceParser's events to r.
func reportTo(r Reporter) func([]event) {
	return func(events []event) {
		for _, e := range events {
			switch e.kind {
			case eventLog:
				r.Log(e.step, e.line)
			case eventStepStarted:
				r.StepStarted(e.step, e.total, e.instruction)
			case eventStepFinished:
				r.StepFinished(e.step, e.instruction, e.cached, e.took)
			case eventClipped:
				r.Clipped(e.step, e.line)
			}
		}
	}
}

// buildSession is a BuildKit build's session, running: it serves the
// context and the Dockerfile by file sync (the context's bytes counted),
// the build's secrets and its registry credentials. Docker's engine and a
// standalone buildkitd dial it back differently (dial).
type buildSession struct {
	s          *session.Session
	counter    *byteCounter // bytes of context files the engine read
	dockerfile string       // the Dockerfile's name in the "dockerfile" directory
	close      func()       // stops the session and removes what it served
}

// startSession starts o's session on the engine that dial reaches; the
// caller closes it when the build has ended. The session outlives ctx's
// cancellation until closed: the engine may still ask for files while it
// winds the build down.
func startSession(ctx context.Context, o BuildKitOptions, dial session.Dialer) (_ *buildSession, err error) {
	// DockerfileData is served in place of the context's Dockerfile,
	// which a Dockerfile sent apart from the context need not have.
	dockerfile, err := dockerfileName(o.Dockerfile)
	if o.DockerfileData == nil && err == nil {
		dockerfile, err = dockerfilePath(o.ContextDir, o.Dockerfile)
	}
	if err != nil {
		return nil, err
	}
	dfDir := filepath.Join(o.ContextDir, filepath.FromSlash(path.Dir(dockerfile)))
	if o.DockerfileData != nil {
		if dfDir, err = serveDockerfile(dfDir, path.Base(dockerfile), o.DockerfileData); err != nil {
			return nil, err
		}
		served := dfDir
		defer func() {
			if err != nil {
				os.RemoveAll(served)
			}
		}()
	}
	removeServed := func() {
		if o.DockerfileData != nil {
			os.RemoveAll(dfDir)
		}
	}

	counter := &byteCounter{}
	ctxFS, err := newCountingFS(o.ContextDir, counter)
	if err != nil {
		return nil, fmt.Errorf("build context: %w", err)
	}
	dfFS, err := newCountingFS(dfDir, nil)
	if err != nil {
		return nil, fmt.Errorf("build context: %w", err)
	}

	sessCtx, stopSession := context.WithCancel(context.WithoutCancel(ctx))
	s, err := session.NewSession(sessCtx, o.SharedKey)
	if err != nil {
		stopSession()
		return nil, fmt.Errorf("buildkit session: %w", err)
	}
	dirs := filesync.StaticDirSource{"context": ctxFS, "dockerfile": dfFS}
	if err := addNamedDirs(dirs, o, counter); err != nil {
		stopSession()
		return nil, err
	}
	s.Allow(filesync.NewFSSyncProvider(dirs))
	s.Allow(secretsprovider.FromMap(o.Secrets))
	if len(o.SSH) > 0 {
		s.Allow(&sshForwarder{agents: o.SSH})
	}
	if t := outputTarget(o); t != nil {
		s.Allow(t)
	}
	s.Allow(authprovider.NewDockerAuthProvider(authprovider.DockerAuthProviderConfig{
		AuthConfigProvider: o.Auth.authProvider(),
	}))
	done := make(chan error, 1)
	go func() { done <- s.Run(sessCtx, dial) }()
	return &buildSession{s: s, counter: counter, dockerfile: path.Base(dockerfile), close: func() {
		s.Close()
		stopSession()
		<-done
		removeServed()
	}}, nil
}

// BuildKit before v0.10 (Docker 20.10's is v0.8) loses a build's progress
// once one status update carries over 1 MiB of output, as a loud step's
// burst does when the engine's progress falls behind: it splits the
// update, then sends empty updates in a loop that never ends
// (moby/buildkit bb24010f6 fixed it), so the rest of the output, the
// steps' ends and the end of the build's response never come. Only the
// image ID still does. After stuckProgress empty updates in a row (a
// working engine sends none) the build's log says so, and the image ID
// ends the build; a build that fails then runs until its timeout or a
// cancel.
const stuckProgress = 10000

// errProgressStuck ends reading a stuck progress stream.
var errProgressStuck = errors.New("the engine's progress is stuck")

// stuckProgressLine is the build's log line when the engine's progress is
// lost.
const stuckProgressLine = "[kiln] the engine stopped reporting this build's progress after a burst of over 1 MiB of output " +
	"(a bug of BuildKit before v0.10, as in Docker 20.10): the rest of the output is lost. " +
	"Engines on Docker 23 or later keep loud steps' full logs."

// dockerfilePath returns the Dockerfile's path in the context
// (slash-separated, cleaned, relative), which must be a regular file
// reached without a symlink; a *BuildError says why not.
func dockerfilePath(contextDir, dockerfile string) (string, error) {
	clean, err := dockerfileName(dockerfile)
	if err != nil {
		return "", err
	}
	if !regularInside(contextDir, clean) {
		return "", &BuildError{Message: fmt.Sprintf("Cannot locate specified Dockerfile: %s", clean)}
	}
	return clean, nil
}

// dockerfileName returns the Dockerfile's path as the build names it
// (slash-separated, cleaned, relative, "Dockerfile" for ""), whether or
// not the context holds it.
func dockerfileName(dockerfile string) (string, error) {
	if dockerfile == "" {
		dockerfile = "Dockerfile"
	}
	clean := path.Clean(filepath.ToSlash(dockerfile))
	if path.IsAbs(clean) || clean == ".." || strings.HasPrefix(clean, "../") {
		return "", &BuildError{Message: fmt.Sprintf("the Dockerfile path %q is outside the build context", dockerfile)}
	}
	return clean, nil
}

// MaxDockerfileBytes bounds the Dockerfile the agent reads from a context.
const MaxDockerfileBytes = 4 << 20

// ReadDockerfile reads a build's Dockerfile from its context directory
// as BuildKit would find it: a regular file inside the context, reached
// without a symlink. A *BuildError says why it cannot.
func ReadDockerfile(contextDir, dockerfile string) ([]byte, error) {
	rel, err := dockerfilePath(contextDir, dockerfile)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(contextDir, filepath.FromSlash(rel)), os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return nil, fmt.Errorf("read the Dockerfile: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxDockerfileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read the Dockerfile: %w", err)
	}
	if len(data) > MaxDockerfileBytes {
		return nil, &BuildError{Message: fmt.Sprintf("the Dockerfile %s is larger than %d bytes", rel, MaxDockerfileBytes)}
	}
	return data, nil
}

// serveDockerfile writes data as name in a new temporary directory, with
// the context's name.dockerignore beside it if there is one (BuildKit
// reads it from the Dockerfile's directory), and returns the directory.
func serveDockerfile(dfDir, name string, data []byte) (string, error) {
	dir, err := os.MkdirTemp("", "kiln-dockerfile-")
	if err != nil {
		return "", fmt.Errorf("serve the checked Dockerfile: %w", err)
	}
	err = os.WriteFile(filepath.Join(dir, name), data, 0o644)
	if ignore := name + ".dockerignore"; err == nil && isRegular(filepath.Join(dfDir, ignore)) {
		var b []byte
		if b, err = os.ReadFile(filepath.Join(dfDir, ignore)); err == nil {
			err = os.WriteFile(filepath.Join(dir, ignore), b, 0o644)
		}
	}
	if err != nil {
		os.RemoveAll(dir)
		return "", fmt.Errorf("serve the checked Dockerfile: %w", err)
	}
	return dir, nil
}

// regularInside reports whether rel (slash-separated, cleaned, relative)
// is a regular file inside dir reached without following a symlink: the
// Dockerfile's directory is served to the engine, so a symlinked parent
// must not lead it out of the context.
func regularInside(dir, rel string) bool {
	p := dir
	for _, elem := range strings.Split(rel, "/") {
		p = filepath.Join(p, elem)
		fi, err := os.Lstat(p)
		if err != nil || fi.Mode()&os.ModeSymlink != 0 {
			return false
		}
	}
	return isRegular(p)
}

func isRegular(p string) bool {
	fi, err := os.Lstat(p)
	return err == nil && fi.Mode().IsRegular()
}

// dockerConfig is this host's Docker config (DOCKER_CONFIG or ~/.docker),
// read for every build; a missing or broken one gives no credentials.
func dockerConfig() *configfile.ConfigFile {
	dir := os.Getenv(config.EnvOverrideConfigDir)
	if dir == "" {
		dir = config.Dir()
	}
	cf, err := config.Load(dir)
	if err != nil {
		return configfile.New(filepath.Join(dir, config.ConfigFileName))
	}
	return cf
}

func newBuildID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return "kiln-" + hex.EncodeToString(b[:])
}

// byteCounter counts bytes read from the files a countingFS opens.
type byteCounter struct{ n atomic.Int64 }

// countingFS serves a directory to the engine's file sync with every
// entry owned by root, as the docker CLI does, and counts the bytes of the
// files the engine asks for.
type countingFS struct {
	fsutil.FS
	counter *byteCounter
}

func newCountingFS(dir string, c *byteCounter) (fsutil.FS, error) {
	base, err := fsutil.NewFS(dir)
	if err != nil {
		return nil, err
	}
	fs, err := fsutil.NewFilterFS(base, &fsutil.FilterOpt{Map: func(_ string, st *fstypes.Stat) fsutil.MapResult {
		st.Uid, st.Gid = 0, 0
		return fsutil.MapResultKeep
	}})
	if err != nil {
		return nil, err
	}
	return &countingFS{FS: fs, counter: c}, nil
}

func (f *countingFS) Walk(ctx context.Context, target string, fn gofs.WalkDirFunc) error {
	return f.FS.Walk(ctx, target, fn)
}

func (f *countingFS) Open(p string) (io.ReadCloser, error) {
	rc, err := f.FS.Open(p)
	if err != nil || f.counter == nil {
		return rc, err
	}
	return &countingReader{ReadCloser: rc, c: f.counter}, nil
}

type countingReader struct {
	io.ReadCloser
	c *byteCounter
}

func (r *countingReader) Read(b []byte) (int, error) {
	n, err := r.ReadCloser.Read(b)
	r.c.n.Add(int64(n))
	return n, err
}

// cancelOnDone tells the engine to cancel the BuildKit build buildID when
// ctx ends: cancelling ctx closes the /build response, but BuildKit builds
// on until it is told to stop. stop ends the watch; it reports false when
// ctx had already ended, and then returns once the engine has been told.
func (d *Docker) cancelOnDone(ctx context.Context, buildID string) (stop func() bool) {
	cancelled := make(chan struct{})
	stopWatch := context.AfterFunc(ctx, func() {
		defer close(cancelled)
		cctx, cancel := context.WithTimeout(context.Background(), removalGrace)
		defer cancel()
		_ = d.c.BuildCancel(cctx, buildID)
	})
	return func() bool {
		if stopWatch() {
			return true
		}
		<-cancelled
		return false
	}
}

// traceMessageID is the ID of the /build stream's messages that carry
// BuildKit's progress.
const traceMessageID = "moby.buildkit.trace"

// decodeTrace decodes a progress message of the /build stream: nil for an
// empty one (BuildKit sends them while nothing changes).
func decodeTrace(m *jsonmessage.JSONMessage) (*controlapi.StatusResponse, error) {
	var dt []byte
	if err := json.Unmarshal(*m.Aux, &dt); err != nil {
		return nil, fmt.Errorf("decoding a progress message: %w", err)
	}
	if len(dt) == 0 {
		return nil, nil
	}
	var st controlapi.StatusResponse
	if err := proto.Unmarshal(dt, &st); err != nil {
		return nil, fmt.Errorf("decoding a progress message: %w", err)
	}
	return &st, nil
}

// startSession starts o's session on the engine, over its /session
// endpoint.
func (d *Docker) startSession(ctx context.Context, o BuildKitOptions) (*buildSession, error) {
	return startSession(ctx, o, func(ctx context.Context, proto string, meta map[string][]string) (net.Conn, error) {
		return d.c.DialHijack(ctx, "/session", proto, meta)
	})
}
