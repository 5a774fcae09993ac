package engine

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"

	"github.com/moby/buildkit/client"
	"github.com/moby/buildkit/exporter/containerimage/exptypes"
	"github.com/moby/buildkit/util/grpcerrors"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc/codes"

	"github.com/kilnbuild/kiln/proto/rules/cacheopt"
	"github.com/kilnbuild/kiln/proto/rules/platforms"
)

// TLSConfig is how the agent reaches a buildkitd over TLS: files holding
// the CA that signed the daemon's certificate and the agent's own
// certificate and key, and the name the daemon's certificate must carry
// ("" means the address's host). The zero value means no TLS.
type TLSConfig struct {
	CACert, Cert, Key string
	ServerName        string
}

// BuildKitd drives one standalone buildkitd with BuildKit's own client, as
// buildctl and buildx's remote driver do: Control.Solve with the
// Dockerfile frontend and a session that serves the context, the
// Dockerfile, the secrets and registry credentials. It builds only the
// BuildKit way, pushes the image as part of the build and exports cache
// to registries. It is safe for concurrent use.
//
// Which registries speak plain HTTP is the daemon's own configuration
// (buildkitd.toml: [registry."host:port"] http = true; BuildKit falls
// back to HTTP on its own only for loopback hosts), as dockerd's
// insecure-registries is for Docker. The agent passes no
// registry.insecure attribute: buildx adds it only when its user asks,
// and a build may not widen where its engine talks HTTP.
type BuildKitd struct {
	c    *client.Client
	addr string
	// socket is the daemon's unix socket path, "" for tcp: the owner of
	// a rootless daemon's socket is not root.
	socket string
}

// NewBuildKitd prepares a client for the buildkitd at addr,
// "unix:///run/buildkit/buildkitd.sock" or "tcp://host:port" (or the
// same as ParseAddress reads "buildkit://…"). A tcp
// address that is not loopback is refused without TLS (CACert): the agent
// never hands secrets and credentials to a daemon that anyone on the path
// could impersonate. It dials nothing; Info is the first request.
func NewBuildKitd(ctx context.Context, addr string, tls TLSConfig) (*BuildKitd, error) {
	kind, parsed, err := ParseAddress(addr)
	if err != nil {
		return nil, err
	}
	if kind == KindDocker {
		return nil, fmt.Errorf("buildkitd %q: the address names a Docker engine", addr)
	}
	addr = parsed
	var socket string
	if path, ok := strings.CutPrefix(addr, "unix://"); ok {
		socket = path
	} else if host, _, _ := net.SplitHostPort(strings.TrimPrefix(addr, "tcp://")); tls.CACert == "" && !isLoopback(host) {
		return nil, fmt.Errorf("buildkitd %q is remote and has no TLS: give the CA certificate (and the agent's certificate and key); the agent refuses to talk to a remote engine without TLS verification", addr)
	}
	if (tls.Cert == "") != (tls.Key == "") {
		return nil, fmt.Errorf("buildkitd %q: TLS needs both the certificate and its key", addr)
	}
	if tls.CACert == "" && (tls.Cert != "" || tls.ServerName != "") {
		return nil, fmt.Errorf("buildkitd %q: TLS needs the CA certificate", addr)
	}
	var opts []client.ClientOpt
	if tls.CACert != "" {
		opts = append(opts, client.WithServerConfig(tls.ServerName, tls.CACert))
		if tls.Cert != "" {
			opts = append(opts, client.WithCredentials(tls.Cert, tls.Key))
		}
	}
	c, err := client.New(ctx, addr, opts...)
	if err != nil {
		return nil, fmt.Errorf("buildkitd %s: %w", addr, err)
	}
	return &BuildKitd{c: c, addr: addr, socket: socket}, nil
}

// Addr returns the daemon address this client talks to.
func (b *BuildKitd) Addr() string { return b.addr }

// Close releases the client's connection.
func (b *BuildKitd) Close() error { return b.c.Close() }

// snapshotterLabel is the worker label naming a buildkitd worker's snapshotter.
const snapshotterLabel = "org.mobyproject.buildkit.worker.snapshotter"

// Info asks the daemon who it is (its version and its first worker's
// platform and snapshotter). It is also the agent's liveness check: an
// error means the daemon does not answer.
func (b *BuildKitd) Info(ctx context.Context) (Info, error) {
	bi, err := b.c.Info(ctx)
	if err != nil {
		return Info{}, fmt.Errorf("buildkitd %s: info: %w", b.addr, err)
	}
	workers, err := b.c.ListWorkers(ctx)
	if err != nil {
		return Info{}, fmt.Errorf("buildkitd %s: workers: %w", b.addr, err)
	}
	if len(workers) == 0 {
		return Info{}, fmt.Errorf("buildkitd %s has no worker", b.addr)
	}
	w := workers[0]
	info := Info{
		Kind:          KindBuildKit,
		Builders:      []string{"buildkit"},
		Features:      []string{FeatureCacheImport, FeatureCacheExportInline, FeatureCacheExportRegistry, FeaturePushInBuild, FeatureAnnotations, FeatureAttestations, FeatureCall, FeatureNamedContexts},
		ServerVersion: bi.BuildkitVersion.Version,
		StorageDriver: w.Labels[snapshotterLabel],
	}
	if len(w.Platforms) > 0 {
		p := w.Platforms[0]
		info.OS, info.Arch = p.OS, p.Architecture
		if p.Variant != "" {
			info.Arch += "/" + p.Variant
		}
		// The worker lists its native platform first, then those its
		// binfmt_misc handlers emulate.
		info.Platforms = nonEmptyList(platforms.Native(info.OS, info.Arch))
		var all []string
		for _, wp := range w.Platforms[1:] {
			arch := wp.Architecture
			if wp.Variant != "" {
				arch += "/" + wp.Variant
			}
			all = append(all, platforms.Native(wp.OS, arch))
		}
		info.Emulated = platforms.Emulated(info.Platforms, all)
	}
	if b.rootless(w.Labels) {
		info.Features = append(info.Features, FeatureRootless)
	}
	return info, nil
}

// RootlessLabel is a worker label an operator may set
// (buildkitd --oci-worker-labels kiln.rootless=true) to say the daemon is
// rootless where the agent cannot see its socket.
const RootlessLabel = "kiln.rootless"

// rootless reports whether the daemon runs without root: BuildKit's
// workers carry no label saying so, but a rootless buildkitd (under
// RootlessKit, in a user namespace) creates its socket as the
// unprivileged user it runs as, while a rootful one's belongs to root.
// A tcp daemon is rootless only if its worker's RootlessLabel says so.
func (b *BuildKitd) rootless(labels map[string]string) bool {
	if labels[RootlessLabel] == "true" {
		return true
	}
	if b.socket == "" {
		return false
	}
	fi, err := os.Stat(b.socket)
	if err != nil {
		return false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && st.Uid != 0
}

// Build refuses: a standalone buildkitd has no classic builder.
func (b *BuildKitd) Build(ctx context.Context, contextTar io.Reader, o BuildOptions, r Reporter) (Result, error) {
	return Result{}, fmt.Errorf("buildkitd %s builds only with BuildKit: it has no classic builder", b.addr)
}

// Push refuses: a buildkitd pushes the tags as part of the build
// (BuildKitOptions.Push, FeaturePushInBuild) and keeps no image store to
// push from afterwards.
func (b *BuildKitd) Push(ctx context.Context, tag string, creds Credentials, log func(line string)) (string, int64, error) {
	return "", 0, fmt.Errorf("push %s: buildkitd %s pushes only as part of the build (BuildKitOptions.Push)", tag, b.addr)
}

// BuildKit builds an image with the daemon's Dockerfile frontend
// ("dockerfile.v0") in one Control.Solve: a session (buildSession, the one
// Docker's path uses, dialled through the daemon's Control API) serves the
// context and the Dockerfile by file sync, the secrets and registry
// credentials; the image exporter names the image after o.Tags and, with
// o.Push, pushes every tag; o.CacheFrom and o.CacheTo are the solve's
// cache imports and exports. The daemon's progress (SolveStatus) goes
// through the traceParser as Docker's does, so the Reporter hears the
// same events.
//
// A cache import whose ref the registry does not have is no failure: the
// build runs without it and the log says so. A build that fails returns
// *BuildError. Cancelling ctx cancels the solve on the daemon, which
// stops its containers, and BuildKit returns ctx's error.
func (b *BuildKitd) BuildKit(ctx context.Context, o BuildKitOptions, r Reporter) (BuildKitResult, error) {
	if r == nil {
		r = nopReporter{}
	}
	if o.Call != "" {
		return b.call(ctx, o, r)
	}
	// The image exporter makes the image (and reports its config digest)
	// even without a name.
	attrs := map[string]string{}
	if len(o.Tags) > 0 {
		attrs["name"] = strings.Join(o.Tags, ",")
		if o.Push {
			attrs["push"] = "true"
		}
	}
	if len(o.Annotations) > 0 {
		maps.Copy(attrs, o.Annotations)
		attrs["oci-mediatypes"] = "true" // Docker's media types carry no annotations
	}
	exports := []client.ExportEntry{{Type: client.ExporterImage, Attrs: attrs}}
	res, p, contextBytes, err := b.solve(ctx, o, exports, o.CacheFrom, o.CacheTo, reportTo(r))
	if err != nil {
		return BuildKitResult{}, err
	}
	out := BuildKitResult{
		Result:       Result{ImageID: res.ExporterResponse[exptypes.ExporterImageConfigDigestKey], Steps: p.steps, CachedSteps: p.cachedSteps},
		ContextBytes: contextBytes,
	}
	if out.ImageID == "" && len(o.Attests) > 0 {
		// The image and its attestations are pushed as an index, which has
		// no config: the image id is the index's digest, as buildx's
		// --iidfile then holds.
		out.ImageID = res.ExporterResponse[exptypes.ExporterImageDigestKey]
	}
	if out.ImageID == "" {
		return BuildKitResult{}, fmt.Errorf("build on %s: the daemon's response has no image config digest", b.addr)
	}
	if o.Push {
		pushed, err := pushedTags(o.Tags, res.ExporterResponse)
		if err != nil {
			return BuildKitResult{}, fmt.Errorf("build on %s: %w", b.addr, err)
		}
		out.Pushed = pushed
		if out.Descriptor, err = imageDescriptor(res.ExporterResponse); err != nil {
			return BuildKitResult{}, fmt.Errorf("build on %s: %w", b.addr, err)
		}
	}
	return out, nil
}

// pushedTags reads the pushed manifest from the image exporter's response:
// every tag got the same one.
func pushedTags(tags []string, resp map[string]string) ([]Pushed, error) {
	dgst := resp[exptypes.ExporterImageDigestKey]
	if dgst == "" {
		return nil, errors.New("the daemon's response has no pushed manifest digest")
	}
	var size int64
	if enc := resp[exptypes.ExporterImageDescriptorKey]; enc != "" {
		dt, err := base64.StdEncoding.DecodeString(enc)
		if err != nil {
			return nil, fmt.Errorf("the daemon's image descriptor: %w", err)
		}
		var desc ocispecs.Descriptor
		if err := json.Unmarshal(dt, &desc); err != nil {
			return nil, fmt.Errorf("the daemon's image descriptor: %w", err)
		}
		size = desc.Size
	}
	out := make([]Pushed, len(tags))
	for i, t := range tags {
		out[i] = Pushed{Tag: t, Digest: dgst, Size: size}
	}
	return out, nil
}

// ExportCache solves o again, as the build did (every step a cache hit),
// exporting only its cache to `to`: type=registry (mode from to's
// attributes) pushes the cache as its own artifact under its ref;
// type=inline pushes the image with the cache metadata in its config (so
// under another image ID than res's) as to's ref. The build's tags are not
// touched. The Reporter hears the solve's log lines, not its steps: the
// build's steps were reported already.
func (b *BuildKitd) ExportCache(ctx context.Context, o BuildKitOptions, res Result, to CacheOption, r Reporter) error {
	if r == nil {
		r = nopReporter{}
	}
	var exports []client.ExportEntry
	switch to.Type {
	case cacheopt.TypeRegistry:
		if to.Attrs["ref"] == "" {
			return errors.New("cache export: type=registry needs a ref")
		}
	case cacheopt.TypeInline:
		ref := to.Attrs["ref"]
		if ref == "" {
			return errors.New("cache export: type=inline needs a ref to push the image with its cache to")
		}
		exports = append(exports, client.ExportEntry{Type: client.ExporterImage, Attrs: map[string]string{"name": ref, "push": "true"}})
	default:
		return fmt.Errorf("cache export: type %q is not supported (registry or inline)", to.Type)
	}
	logsOnly := func(events []event) {
		for _, e := range events {
			switch e.kind {
			case eventLog:
				r.Log(e.step, e.line)
			case eventClipped:
				r.Clipped(e.step, e.line)
			}
		}
	}
	o.NoCache = false
	o.Pull = false
	if _, _, _, err := b.solve(ctx, o, exports, o.CacheFrom, []CacheOption{to}, logsOnly); err != nil {
		return fmt.Errorf("cache export to %s: %w", to.Attrs["ref"], err)
	}
	return nil
}

// solve runs one Dockerfile-frontend solve of o with exports and cache
// options, handing the progress's events to report. It returns the
// daemon's response, the traceParser that counted the steps and the bytes
// of context files the daemon read.
func (b *BuildKitd) solve(ctx context.Context, o BuildKitOptions, exports []client.ExportEntry, from, to []CacheOption, report func([]event)) (*client.SolveResponse, *traceParser, int64, error) {
	bs, err := startSession(ctx, o, b.c.Dialer())
	if err != nil {
		return nil, nil, 0, err
	}
	defer bs.close()

	opt := client.SolveOpt{
		Frontend:              "dockerfile.v0",
		FrontendAttrs:         frontendAttrs(o, bs.dockerfile),
		AllowedEntitlements:   entitlements(o),
		Exports:               exports,
		CacheImports:          cacheEntries(from),
		CacheExports:          cacheEntries(to),
		SharedKey:             o.SharedKey,
		SharedSession:         bs.s,
		SessionPreInitialized: true,
		// Internal keeps the build out of the daemon's build history, which
		// would otherwise keep every step's raw log — secrets a step
		// printed included, unmasked — readable with
		// `buildctl debug histories`. kiln keeps the (masked) log itself.
		Internal: true,
	}
	statusCh := make(chan *client.SolveStatus)
	type solved struct {
		res *client.SolveResponse
		err error
	}
	done := make(chan solved, 1)
	go func() {
		res, err := b.c.Solve(ctx, nil, opt, statusCh) // closes statusCh when it returns
		done <- solved{res, err}
	}()
	p := newTraceParser()
	for st := range statusCh {
		for _, sr := range st.Marshal() {
			p.each(sr, report)
		}
	}
	report(p.finish())
	s := <-done

	if ctx.Err() != nil {
		return nil, nil, 0, fmt.Errorf("build cancelled at step %d: %w", p.next, ctx.Err())
	}
	if s.err != nil {
		msg := solveMessage(s.err)
		if p.failure != nil {
			if p.failure.Step == 0 {
				p.failure.Message = msg
			}
			return nil, nil, 0, p.failure
		}
		if engineDown(s.err) {
			return nil, nil, 0, fmt.Errorf("build on %s: %w", b.addr, s.err)
		}
		return nil, nil, 0, &BuildError{Message: msg}
	}
	if p.failure != nil {
		return nil, nil, 0, p.failure
	}
	return s.res, p, bs.counter.n.Load(), nil
}

// frontendAttrs are o's settings as the Dockerfile frontend takes them,
// as buildctl's --opt and buildx pass them.
func frontendAttrs(o BuildKitOptions, dockerfile string) map[string]string {
	attrs := map[string]string{"filename": dockerfile}
	maps.Copy(attrs, namedContextAttrs(o))
	if o.Target != "" {
		attrs["target"] = o.Target
	}
	for k, v := range o.BuildArgs {
		attrs["build-arg:"+k] = v
	}
	for k, v := range o.Labels {
		attrs["label:"+k] = v
	}
	if o.NoCache {
		attrs["no-cache"] = ""
	}
	if o.Pull {
		attrs["image-resolve-mode"] = "pull"
	}
	if o.Network != "" {
		attrs["force-network-mode"] = o.Network
	}
	var hosts []string
	for _, h := range o.ExtraHosts {
		name, ip, _ := strings.Cut(h, ":")
		hosts = append(hosts, name+"="+ip)
	}
	if len(hosts) > 0 {
		attrs["add-hosts"] = strings.Join(hosts, ",")
	}
	if o.Platform != "" {
		attrs["platform"] = o.Platform
	}
	maps.Copy(attrs, o.Attests)
	if o.ShmSize > 0 {
		attrs["shm-size"] = strconv.FormatInt(o.ShmSize, 10)
	}
	var ulimits []string
	for _, u := range o.Ulimits {
		ulimits = append(ulimits, fmt.Sprintf("%s=%d:%d", u.Name, u.Soft, u.Hard))
	}
	if len(ulimits) > 0 {
		attrs["ulimit"] = strings.Join(ulimits, ",")
	}
	return attrs
}

// entitlements are what o's build needs the daemon to allow (buildx
// --allow): the host's network for --network host, which the daemon
// grants only when started with --allow-insecure-entitlement network.host.
func entitlements(o BuildKitOptions) []string {
	if o.Network == "host" {
		return []string{"network.host"}
	}
	return nil
}

func cacheEntries(opts []CacheOption) []client.CacheOptionsEntry {
	out := make([]client.CacheOptionsEntry, 0, len(opts))
	for _, o := range opts {
		out = append(out, client.CacheOptionsEntry{Type: o.Type, Attrs: maps.Clone(o.Attrs)})
	}
	return out
}

// solveMessage is the daemon's message for a failed solve, without the
// client's "failed to solve: " and gRPC's wrapping.
func solveMessage(err error) string {
	msg := err.Error()
	msg = strings.TrimPrefix(msg, "failed to solve: ")
	return strings.TrimPrefix(msg, "rpc error: code = Unknown desc = ")
}

// engineDown reports whether a failed solve means the daemon could not be
// reached or stopped answering, rather than that it ran the build and
// reported it failed.
func engineDown(err error) bool {
	switch grpcerrors.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled, codes.Internal:
		return true
	}
	return false
}
