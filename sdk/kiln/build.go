package kiln

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules/buildflags"
	"github.com/kilnbuild/kiln/proto/rules/cacheopt"
	"github.com/kilnbuild/kiln/proto/rules/seal"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

// BuildRequest is one build to run on the farm.
type BuildRequest struct {
	// Spec holds the docker-build options. Its Dockerfile defaults to the
	// Context's.
	Spec *kilnv1.BuildSpec
	// Context is the packed build context (PackContext). Build uploads it
	// unless UploadContext has. It is nil for a build whose context is a
	// Git URL (Spec.GitContext), which the farm fetches itself.
	Context *Context
	// BuildContexts are named contexts (buildx --build-context NAME=DIR),
	// each packed with PackNamedContext, by name as the Dockerfile's FROM
	// or COPY --from uses it. Build uploads each unless UploadContext has
	// and adds it to the spec's build_contexts; contexts the engine
	// resolves itself (docker-image://REF, Git URLs) go in
	// Spec.BuildContexts as sources. Package proto/rules/namedctx holds
	// the names and values the farm takes.
	BuildContexts map[string]*Context
	// IdempotencyKey makes a repeated request return the build the first
	// one started instead of starting another (Build makes one up when it
	// is empty, so that its own retries are safe). A retry counts as
	// the same request when its secrets have the same ids: their values are
	// sealed anew each time, so the farm cannot compare them.
	IdempotencyKey string
	// Secrets are build secrets by id (buildx --secret), for Dockerfile
	// steps like RUN --mount=type=secret,id=<id>. Build seals each
	// value to the farm's secrets key (GetSecretsKey), so only the farm's
	// agents can read it, and adds it to the spec's secrets. They need the
	// BuildKit builder; see MaxSecretBytes, MaxTotalSecretBytes, MaxSecrets
	// and ValidateSecretID for the limits. A build with secrets is never
	// merged with another caller's identical build.
	//
	// Secrets and registry credentials are sealed for this build alone: for
	// the tenant GetSecretsKey names and a fresh random Spec.SealNonce (the
	// Spec's own, when it has one: values sealed into Spec.Secrets
	// beforehand must be sealed for it, see package proto/rules/seal). The
	// farm refuses a nonce it has seen before, and its agents open a value
	// only in the build it was sealed for.
	Secrets map[string][]byte
	// RegistryAuth are credentials for the registries the build pulls from
	// or pushes to, by registry host as docker config names it ("ghcr.io",
	// "127.0.0.1:5000", "docker.io" for Docker Hub). Build seals each
	// to the farm's secrets key like a secret; the agent uses them before
	// its own host's credentials. A build with registry credentials is
	// never merged with another caller's identical build. A farm without a
	// secrets key cannot take them: they are not sent, and its agents use
	// their hosts' credentials.
	RegistryAuth map[string]RegistryCredential
	// SSH are ssh private keys by ssh id (buildx --ssh ID=PATH), for
	// Dockerfile steps like RUN --mount=type=ssh[,id=<id>]: each value one
	// or more PEM or OpenSSH private keys without passphrase,
	// concatenated, as ReadSSHKeys reads them from key files. Build seals
	// each value like a secret; the agent serves the keys as an ssh agent
	// to this build's steps alone, from memory. They need the BuildKit
	// builder; see package proto/rules/sshid for the limits.
	SSH map[string][]byte
	// Timeout, when positive, makes the farm cancel the build once it has
	// run that long since the farm accepted it; Wait then returns an error
	// matching ErrTimedOut. It overrides Spec's own timeout.
	Timeout time.Duration
	// CacheFrom and CacheTo are caches to import layers from and to export
	// the build's cache to, in buildx's --cache-from and --cache-to syntax
	// ("type=registry,ref=registry:5000/app:cache,mode=max", "type=inline",
	// or a bare ref for type=registry); package proto/rules/cacheopt holds
	// the syntax and the types the farm takes. Build parses them and adds
	// them to the spec's cache_from and cache_to; a value the farm would
	// refuse fails Build before anything is sent. Registry credentials for
	// the caches' hosts go in RegistryAuth (cacheopt.Hosts names them). A
	// type=registry export needs an agent whose engine exports registry
	// cache (a standalone BuildKit engine); a farm without one refuses it
	// with codes.FailedPrecondition.
	CacheFrom, CacheTo []string
}

// RegistryCredential is what a registry takes: a user name and password,
// or an identity (refresh) token.
type RegistryCredential struct {
	Username      string `json:"username,omitempty"`
	Password      string `json:"password,omitempty"`
	IdentityToken string `json:"identitytoken,omitempty"`
}

// Build starts a build and returns it as the farm queued it, followed
// from its first event (see Build). It uploads the context unless it was
// uploaded already (UploadContext; only the blobs the farm lacks travel),
// then starts the build under req.IdempotencyKey, making one up when it is
// empty: a start that fails with codes.Unavailable is retried, on another
// gateway if need be, and the key makes the farm return the build it may
// already have queued instead of starting a second (see WithFailover).
//
// ctx bounds the upload, the start and the following of the build's
// events: cancelling it stops following (Wait returns its error) but
// does not cancel a build that has started; Build.Cancel does that.
func (c *Client) Build(ctx context.Context, req BuildRequest) (*Build, error) {
	if req.Context == nil && req.Spec.GetGitContext() == "" {
		return nil, invalidArgumentf("starting build: no build context")
	}
	if err := checkSecrets(req); err != nil {
		return nil, fmt.Errorf("starting build: %w", err)
	}
	if err := checkSSH(req); err != nil {
		return nil, fmt.Errorf("starting build: %w", err)
	}
	if req.Timeout < 0 {
		return nil, invalidArgumentf("starting build: the timeout %s is negative", req.Timeout)
	}
	if _, _, err := cacheOptions(req); err != nil {
		return nil, fmt.Errorf("starting build: %w", err)
	}
	if req.Context != nil && req.Context.Ref() == nil {
		if _, err := c.UploadContext(ctx, req.Context); err != nil {
			return nil, err
		}
	}
	if err := c.uploadBuildContexts(ctx, req); err != nil {
		return nil, err
	}
	if req.IdempotencyKey == "" {
		key, err := NewIdempotencyKey()
		if err != nil {
			return nil, fmt.Errorf("starting build: %w", err)
		}
		req.IdempotencyKey = key
	}
	record, err := c.start(ctx, req)
	if err != nil {
		return nil, err
	}
	return c.follow(ctx, record, 0, false), nil
}

// WatchOption changes how Watch follows a build.
type WatchOption func(*watchOptions)

type watchOptions struct{ soFar bool }

// SoFar makes Watch replay only the events the build's log holds when it
// starts (kiln logs without -f): Events closes after them, and Wait
// returns the record as it is then — still running, perhaps, and nil — or
// the build's outcome if it had ended.
func SoFar() WatchOption { return func(o *watchOptions) { o.soFar = true } }

// Watch follows a build that was started elsewhere (another process,
// kiln build --detach) from event fromSequence on (0 or 1: from the
// start), as Build follows the builds it starts: each event once, in
// order, resumed across gateways. It fails at once, with codes.NotFound,
// for a build the farm does not know (or that is another tenant's). ctx
// bounds the following, as for Build.
func (c *Client) Watch(ctx context.Context, id string, fromSequence uint64, opts ...WatchOption) (*Build, error) {
	var o watchOptions
	for _, opt := range opts {
		opt(&o)
	}
	record, err := c.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	return c.follow(ctx, record, fromSequence, o.soFar), nil
}

// start queues a build of an uploaded context under req.IdempotencyKey,
// which Build has set, and returns its record. A start that fails with
// codes.Unavailable is retried, on another gateway if need be (see
// WithFailover).
func (c *Client) start(ctx context.Context, req BuildRequest) (*kilnv1.Build, error) {
	if req.IdempotencyKey == "" {
		return nil, invalidArgumentf("starting build: no idempotency key")
	}
	var ref *kilnv1.ContextRef
	if req.Context != nil {
		if ref = req.Context.Ref(); ref == nil {
			return nil, invalidArgumentf("starting build: the build context was not uploaded")
		}
	} else if req.Spec.GetGitContext() == "" {
		return nil, invalidArgumentf("starting build: no build context")
	}
	spec := &kilnv1.BuildSpec{}
	if req.Spec != nil {
		spec = proto.CloneOf(req.Spec)
	}
	if err := addBuildContexts(spec, req); err != nil {
		return nil, fmt.Errorf("starting build: %w", err)
	}
	if spec.Dockerfile == "" && req.Context != nil {
		spec.Dockerfile = req.Context.Dockerfile()
		if spec.DockerfileInline == nil {
			spec.DockerfileInline = req.Context.DockerfileInline()
		}
	}
	setTimeout(spec, req.Timeout)
	from, to, err := cacheOptions(req)
	if err != nil {
		return nil, fmt.Errorf("starting build: %w", err)
	}
	spec.CacheFrom, spec.CacheTo = append(spec.CacheFrom, from...), append(spec.CacheTo, to...)
	if err := cacheopt.ValidateAll(spec.CacheFrom, spec.CacheTo); err != nil {
		return nil, fmt.Errorf("starting build: %w", invalidArgumentf("%s", err))
	}
	if err := buildflags.Validate(spec); err != nil {
		return nil, fmt.Errorf("starting build: %w", invalidArgumentf("%s", err))
	}
	if len(req.Secrets) > 0 || len(req.RegistryAuth) > 0 || len(req.SSH) > 0 {
		if err := c.sealInto(ctx, spec, req); err != nil {
			return nil, fmt.Errorf("starting build: %w", err)
		}
	}
	sr := &kilnv1.StartBuildRequest{Spec: spec, Context: ref, IdempotencyKey: req.IdempotencyKey}
	var resp *kilnv1.StartBuildResponse
	start := func() error {
		var err error
		resp, err = c.builds.StartBuild(ctx, sr)
		return err
	}
	// A gateway that died before answering may have queued the build: the
	// key makes the retry return it instead of a second one.
	if err := c.retry.retry(ctx, start); err != nil {
		return nil, fmt.Errorf("starting build: %w", err)
	}
	return resp.GetBuild(), nil
}

// cacheOptions parses and checks req's CacheFrom and CacheTo.
func cacheOptions(req BuildRequest) (from, to []*kilnv1.CacheOption, err error) {
	if from, to, err = cacheopt.ParseAll(req.CacheFrom, req.CacheTo); err != nil {
		return nil, nil, invalidArgumentf("%s", err)
	}
	return from, to, nil
}

// setTimeout sets the spec's timeout to d, when positive.
func setTimeout(spec *kilnv1.BuildSpec, d time.Duration) {
	if d > 0 {
		spec.Timeout = durationpb.New(d)
	}
}

// sealInto seals req's secrets and registry credentials into spec, for the
// caller's tenant and the build's seal nonce: spec's own when it has one
// (values sealed into the spec beforehand must use it too), else a fresh
// one. A farm without a secrets key refuses secrets; it cannot take
// registry credentials either, and then they are not sent: its agents use
// their hosts' own.
func (c *Client) sealInto(ctx context.Context, spec *kilnv1.BuildSpec, req BuildRequest) error {
	if len(spec.SealNonce) == 0 {
		nonce, err := seal.NewNonce()
		if err != nil {
			return err
		}
		spec.SealNonce = nonce
	}
	s, err := c.newSealer(ctx, spec.SealNonce)
	if err != nil {
		if len(req.Secrets) == 0 && len(req.SSH) == 0 && status.Code(err) == codes.FailedPrecondition {
			return nil
		}
		return err
	}
	if len(req.Secrets) > 0 {
		sealed, err := s.seal(req.Secrets)
		if err != nil {
			return err
		}
		spec.Secrets = append(spec.Secrets, sealed...)
	}
	if len(req.SSH) > 0 {
		sealed, err := s.seal(req.SSH)
		if err != nil {
			return fmt.Errorf("ssh keys: %w", err)
		}
		spec.Ssh = append(spec.Ssh, sealed...)
	}
	if len(req.RegistryAuth) > 0 {
		plain := make(map[string][]byte, len(req.RegistryAuth))
		for host, cred := range req.RegistryAuth {
			plain[host], _ = json.Marshal(cred)
		}
		sealed, err := s.seal(plain)
		if err != nil {
			return fmt.Errorf("registry credentials: %w", err)
		}
		spec.RegistryAuth = append(spec.RegistryAuth, sealed...)
	}
	return nil
}

// NewIdempotencyKey returns a random idempotency key, as Build makes up
// for a request without one.
func NewIdempotencyKey() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("making an idempotency key: %w", err)
	}
	return "kiln-" + hex.EncodeToString(b[:]), nil
}

// settle makes a record that GetBuild returned before the build's final
// update reached it agree with the finished event already seen.
func settle(record *kilnv1.Build, finished *kilnv1.BuildFinished) {
	if finished == nil || terminal(record.GetState()) {
		return
	}
	record.State = finished.GetState()
	if record.Result == nil {
		record.Result = finished.GetResult()
	}
	if record.Error == "" {
		record.Error = finished.GetError()
	}
	if record.Agent == "" {
		record.Agent = finished.GetAgent()
	}
	record.TimedOut = record.TimedOut || finished.GetTimedOut()
}

func terminal(s kilnv1.BuildState) bool {
	switch s {
	case kilnv1.BuildState_BUILD_STATE_SUCCEEDED, kilnv1.BuildState_BUILD_STATE_FAILED, kilnv1.BuildState_BUILD_STATE_CANCELLED:
		return true
	}
	return false
}
