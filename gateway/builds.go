package gateway

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"path"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/affinity"
	"github.com/kilnbuild/kiln/services/buildstore"
	"github.com/kilnbuild/kiln/services/bus"
	"github.com/kilnbuild/kiln/services/ctxmanifest"
	"github.com/kilnbuild/kiln/services/telemetry"
)

// StartBuild validates the request, records the build as QUEUED and hands
// it to the scheduler. Nothing is stored or queued when validation fails.
func (g *Gateway) StartBuild(ctx context.Context, req *kilnv1.StartBuildRequest) (*kilnv1.StartBuildResponse, error) {
	ctx, span := startBuildSpan(ctx)
	defer span.End()
	var spec *kilnv1.BuildSpec
	if req.GetSpec() != nil {
		spec = proto.Clone(req.Spec).(*kilnv1.BuildSpec)
	}
	b, err := g.start(ctx, buildStart{
		spec: spec, context: req.GetContext(), idempotencyKey: req.GetIdempotencyKey(), hash: requestHash(req),
	})
	if err != nil {
		return nil, err
	}
	return &kilnv1.StartBuildResponse{Build: b}, nil
}

// buildStart is one build to queue: a StartBuild request, or a RetryBuild's
// copy of an earlier build.
type buildStart struct {
	spec           *kilnv1.BuildSpec // the caller's own copy: defaults are filled in
	context        *kilnv1.ContextRef
	idempotencyKey string
	// hash identifies what is asked, to tell a request sent again under its
	// idempotency key from another request under the same key.
	hash string
	// retryOf is the build RetryBuild copies ("" for StartBuild).
	retryOf string
}

// start is StartBuild's and RetryBuild's one path: it validates the spec
// and context, claims the idempotency key (returning the build it already
// names) and the seal nonce, merges with an identical build in flight or
// records the build as QUEUED and hands it to the scheduler. It returns
// the record as a client may see it.
func (g *Gateway) start(ctx context.Context, st buildStart) (*kilnv1.Build, error) {
	span := trace.SpanFromContext(ctx)
	spec := st.spec
	if err := validateSpec(spec); err != nil {
		return nil, err
	}
	if err := checkNamespaces(ctx, spec); err != nil {
		return nil, err
	}
	if err := checkNetworkPolicy(ctx, spec); err != nil {
		return nil, err
	}
	if err := g.checkSealedTo(spec); err != nil {
		return nil, err
	}
	if err := g.checkRegistryExport(ctx, spec); err != nil {
		return nil, err
	}
	if err := g.checkAttest(ctx, spec); err != nil {
		return nil, err
	}
	limits := g.limitsFor(ctx)
	if err := validateMainContext(spec, st.context, limits); err != nil {
		return nil, err
	}
	if err := g.checkBuildContexts(ctx, spec, limits); err != nil {
		return nil, err
	}
	dfPath := spec.Dockerfile
	if len(spec.DockerfileInline) > 0 {
		dfPath = "" // sent apart from the context: the context need not hold it
	}
	dockerfile, err := g.checkMainContext(ctx, spec, st.context, dfPath, limits)
	if err != nil {
		if st.retryOf != "" && status.Code(err) == codes.FailedPrecondition {
			return nil, status.Errorf(codes.FailedPrecondition, "build %s cannot be retried: its context is no longer stored on the farm (%s); start it again from its source", st.retryOf, status.Convert(err).Message())
		}
		return nil, err
	}
	if len(spec.DockerfileInline) > 0 {
		dockerfile = spec.DockerfileInline
	}
	// The writes wait for the NATS cluster at most natsWriteTimeout: one
	// without quorum answers Unavailable, not the client's deadline.
	ctx, cancel := context.WithTimeout(ctx, natsWriteTimeout)
	defer cancel()
	c := callerOf(ctx)
	tenant := c.tenant.Name
	now := time.Now()
	b := &kilnv1.Build{
		Id:             buildstore.NewID(now),
		Tenant:         tenant,
		Spec:           spec,
		Context:        st.context,
		State:          kilnv1.BuildState_BUILD_STATE_QUEUED,
		CreatedAt:      timestamppb.New(now),
		QueuedAt:       timestamppb.New(now),
		IdempotencyKey: st.idempotencyKey,
		Affinity:       affinity.Compute(tenant, spec, dockerfile),
		TraceContext:   telemetry.InjectMap(ctx),
		RetryOf:        st.retryOf,
	}
	if !c.local { // local builds carry no policy: the agent's flags decide
		b.Policy = c.tenant.BuildPolicy()
	}
	stampCacheRegistry(b, g.limits.CacheRegistry)
	span.SetAttributes(telemetry.BuildID(b.Id), telemetry.TenantKey.String(tenant))
	if st.idempotencyKey != "" {
		existing, err := g.claimIdempotencyKey(ctx, tenant, st.idempotencyKey, st.hash, b.Id)
		if err != nil {
			return nil, err
		}
		if existing != nil {
			buildsStarted.WithLabelValues(startIdempotentReplay).Inc()
			g.log.InfoContext(ctx, "idempotency key names an earlier build", "build_id", existing.Id, "tenant", tenant)
			return forClient(existing), nil
		}
	}
	releaseKey := func() {
		if st.idempotencyKey != "" {
			_ = g.idem.Delete(context.WithoutCancel(ctx), idemKey(tenant, st.idempotencyKey))
		}
	}
	// After the idempotency key: a retry gets its build back. A RetryBuild
	// keeps the nonce its build claimed: the copy is the gateway's own, of
	// the caller's own build, so it is no replay, and the agent opens the
	// sealed values with the same tenant, nonce and ids.
	if hasSealed(spec) && st.retryOf == "" {
		if err := g.claimSealNonce(ctx, tenant, spec.SealNonce, b.Id); err != nil {
			releaseKey()
			return nil, err
		}
	}
	release := func() {}
	if key, ok := inflightKey(tenant, spec, st.context); ok {
		var twin *kilnv1.Build
		twin, release, err = g.joinInflight(ctx, key, b.Id)
		if err == nil && twin != nil {
			if st.idempotencyKey != "" { // the key now means the build it joined
				_, _ = g.idem.Put(ctx, idemKey(tenant, st.idempotencyKey), []byte(twin.Id+" "+st.hash))
			}
			buildsStarted.WithLabelValues(startMerged).Inc()
			g.log.InfoContext(ctx, "identical build in flight: merged", "build_id", twin.Id, "tenant", tenant)
			return forClient(twin), nil
		}
	}
	var rev uint64
	if err == nil {
		rev, err = g.builds.Create(ctx, b)
		if err != nil {
			release()
			g.abandonUnknown(ctx, st.idempotencyKey, b.Id, err)
		}
	}
	if err != nil {
		releaseKey()
		return nil, err
	}
	if err := g.handOver(ctx, b, rev); err != nil {
		g.abandonUnknown(ctx, st.idempotencyKey, b.Id, err)
		return nil, err
	}
	logArgs := []any{"build_id", b.Id, "tenant", tenant, "tags", spec.Tags}
	if st.retryOf != "" {
		logArgs = append(logArgs, "retry_of", st.retryOf)
	}
	if ids := sealedIDs(spec.Secrets); ids != nil {
		logArgs = append(logArgs, "secrets", ids) // ids only: never the sealed bytes
	}
	if hosts := sealedIDs(spec.RegistryAuth); hosts != nil {
		logArgs = append(logArgs, "registry_auth", hosts)
	}
	buildsStarted.WithLabelValues(startQueued).Inc()
	g.log.InfoContext(ctx, "build queued", logArgs...)
	return forClient(b), nil
}

// natsWriteTimeout bounds the writes of one StartBuild (claims, record,
// event, intake), which take a few milliseconds while the NATS cluster has
// quorum and never complete while it has not.
var natsWriteTimeout = 15 * time.Second

// handOver appends the QUEUED event to the build's log and hands the build
// to the scheduler on kiln.requests, in one round trip rather than two: the
// event is published without waiting for its ack, then the intake message.
// Both leave on this one connection in that order, so the event reaches
// its stream before the scheduler can see the intake message, and so before
// the scheduler's ASSIGNED event: the log stays QUEUED, ASSIGNED, ….
//
// The intake message carries the record and its revision (rev), which
// saves the scheduler reading it back.
func (g *Gateway) handOver(ctx context.Context, b *kilnv1.Build, rev uint64) error {
	ev, err := bus.EventMsg(&kilnv1.BuildEvent{
		BuildId: b.Id,
		Event:   &kilnv1.BuildEvent_State{State: &kilnv1.StateChanged{State: b.State}},
	})
	if err != nil {
		return err
	}
	queued, err := g.conn.JS.PublishMsgAsync(ev)
	if err != nil {
		return fmt.Errorf("publish event for build %s: %w", b.Id, err)
	}
	msg, err := bus.NewMsg(bus.SubjectRequests, &kilnv1.BuildRequested{BuildId: b.Id, Build: b, Revision: rev})
	if err != nil {
		return err
	}
	msg.Header.Set(nats.MsgIdHdr, b.Id)
	telemetry.InjectNATS(ctx, msg.Header)
	if _, err := g.conn.JS.PublishMsg(ctx, msg); err != nil {
		// The record is QUEUED in KV; a scheduler finds it when it next
		// rebuilds its queue, so the build is not lost.
		g.log.WarnContext(ctx, "intake publish failed; scheduler will recover the build from KV", "build_id", b.Id, "err", err)
	}
	select {
	case <-queued.Ok():
		return nil
	case err := <-queued.Err():
		return fmt.Errorf("publish event for build %s: %w", b.Id, err)
	case <-ctx.Done():
		return fmt.Errorf("publish event for build %s: %w", b.Id, ctx.Err())
	}
}

// maxDockerfileBytes bounds the Dockerfile read for routing.
const maxDockerfileBytes = 1 << 20

// checkContext makes sure the context was uploaded in full and holds the
// Dockerfile, so a build that cannot start is refused instead of queued. It
// returns the Dockerfile's content (nil for a symlinked one) for routing.
//
// Blobs are immutable and the collector deletes only blobs unreferenced for
// longer than its grace, so a context found complete stays complete for a
// while: the answer is remembered per (context, Dockerfile path), for at
// most half the grace and until any collector announces a deletion
// (runCAS), and a context built again skips the check's NATS round trips.
func (g *Gateway) checkContext(ctx context.Context, ref *kilnv1.ContextRef, dockerfile string, limits ctxmanifest.Limits) ([]byte, error) {
	key := checkedKey{ref.Digest.Hash, ref.Digest.SizeBytes, ref.Format, dockerfile, limits}
	if c, ok := g.checked.Get(key); ok {
		return c, nil
	}
	content, err := g.checkContextUncached(ctx, ref, dockerfile, limits)
	if err == nil {
		g.checked.AddCost(key, content, int64(len(content))+256)
	}
	return content, err
}

// checkedKey names one successful context check.
type checkedKey struct {
	digest     string
	size       int64
	format     kilnv1.ContextFormat
	dockerfile string
	limits     ctxmanifest.Limits // a tenant's may be lower than another's
}

// checkedContextBytes bounds the memory of checked contexts.
const checkedContextBytes = 16 << 20

func (g *Gateway) checkContextUncached(ctx context.Context, ref *kilnv1.ContextRef, dockerfile string, limits ctxmanifest.Limits) ([]byte, error) {
	ok, err := g.blobs.Has(ctx, ref.Digest.Hash, ref.Digest.SizeBytes)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, status.Errorf(codes.FailedPrecondition, "context blob %s (%d bytes) has not been uploaded: upload it with ContextService first", ref.Digest.Hash, ref.Digest.SizeBytes)
	}
	if ref.Format == kilnv1.ContextFormat_CONTEXT_FORMAT_MANIFEST {
		return g.checkManifest(ctx, ref, dockerfile, limits)
	}
	if dockerfile == "" {
		return nil, nil
	}
	r, err := g.blobs.Get(ctx, ref.Digest.Hash)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil, invalid("Dockerfile %q not found in the build context", dockerfile)
		}
		if err != nil {
			return nil, invalid("context blob %s is not a readable tar: %v", ref.Digest.Hash, err)
		}
		if path.Clean(h.Name) == dockerfile && (h.Typeflag == tar.TypeReg || h.Typeflag == tar.TypeSymlink) {
			data, _ := io.ReadAll(io.LimitReader(tr, maxDockerfileBytes))
			return data, nil
		}
	}
}

func (g *Gateway) checkManifest(ctx context.Context, ref *kilnv1.ContextRef, dockerfile string, limits ctxmanifest.Limits) ([]byte, error) {
	if ref.Digest.SizeBytes > ctxmanifest.MaxManifestBytes {
		return nil, status.Errorf(codes.ResourceExhausted, "context manifest is %d bytes, over the limit of %d bytes", ref.Digest.SizeBytes, ctxmanifest.MaxManifestBytes)
	}
	r, err := g.blobs.Get(ctx, ref.Digest.Hash)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	data, err := io.ReadAll(io.LimitReader(r, ctxmanifest.MaxManifestBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read context manifest: %w", err)
	}
	m, err := ctxmanifest.Unmarshal(data)
	if err != nil {
		return nil, err
	}
	if _, err := ctxmanifest.Validate(m, limits); err != nil {
		return nil, err
	}
	var df *kilnv1.ContextEntry
	if dockerfile != "" { // "": sent apart from the context
		df = ctxmanifest.Find(m, dockerfile)
		if df == nil || (df.Type != kilnv1.EntryType_ENTRY_TYPE_FILE && df.Type != kilnv1.EntryType_ENTRY_TYPE_SYMLINK) {
			return nil, invalid("Dockerfile %q not found in the build context", dockerfile)
		}
	}
	missing, err := g.missingFiles(ctx, m)
	if err != nil {
		return nil, err
	}
	if len(missing) > 0 {
		return nil, status.Errorf(codes.FailedPrecondition, "%d blobs of the context have not been uploaded (first: %s): upload them with ContextService.UploadBlobs", len(missing), missing[0].Hash)
	}
	if df == nil || df.Type != kilnv1.EntryType_ENTRY_TYPE_FILE || df.Size > maxDockerfileBytes {
		return nil, nil // route by lineage alone
	}
	dr, err := g.blobs.Get(ctx, df.Digest.Hash)
	if err != nil {
		return nil, err
	}
	defer dr.Close()
	content, err := io.ReadAll(dr)
	if err != nil {
		return nil, fmt.Errorf("read Dockerfile: %w", err)
	}
	return content, nil
}

func idemKey(tenant, key string) string {
	sum := sha256.Sum256([]byte(tenant + "\x00" + key))
	return hex.EncodeToString(sum[:])
}

// requestHash identifies what a request asks for, to tell a retry from a
// different request under the same idempotency key. Secrets count by id
// only: a retry re-seals them, and sealing is randomized.
func requestHash(req *kilnv1.StartBuildRequest) string {
	data, _ := proto.MarshalOptions{Deterministic: true}.Marshal(&kilnv1.StartBuildRequest{Spec: withoutSealedBytes(req.Spec), Context: req.Context})
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:])
}

// claimIdempotencyKey maps the tenant's idempotency key to id for good.
// If the key is already mapped it returns that build, or
// FailedPrecondition when the earlier request (its hash) differs.
func (g *Gateway) claimIdempotencyKey(ctx context.Context, tenant, idempotencyKey, hash, id string) (*kilnv1.Build, error) {
	key := idemKey(tenant, idempotencyKey)
	value := id + " " + hash
	for {
		if _, err := g.idem.Create(ctx, key, []byte(value)); err == nil {
			return nil, nil
		} else if !errors.Is(err, jetstream.ErrKeyExists) {
			return nil, fmt.Errorf("record idempotency key: %w", err)
		}
		e, err := g.idem.Get(ctx, key)
		if bus.IsNotFound(err) {
			continue // deleted by a failed start in between; claim again
		}
		if err != nil {
			return nil, fmt.Errorf("read idempotency key: %w", err)
		}
		var prevID, prevHash string
		if _, err := fmt.Sscan(string(e.Value()), &prevID, &prevHash); err != nil {
			return nil, fmt.Errorf("idempotency record for key is corrupt: %w", err)
		}
		if prevHash != hash {
			return nil, status.Errorf(codes.FailedPrecondition, "idempotency key %q was already used for build %s with a different request", idempotencyKey, prevID)
		}
		b, err := g.awaitRecord(ctx, prevID)
		if errors.Is(err, buildstore.ErrNotFound) {
			// A start that failed (the NATS cluster unavailable, say)
			// left the key without a build: this request takes it over.
			// Were that build's record committed late (abandon.go), it
			// would run too — a duplicate, never a loss: the build it
			// named may be a slow start that is about to answer OK.
			if _, err := g.idem.Update(ctx, key, []byte(value), e.Revision()); err != nil {
				if bus.IsWrongRevision(err) {
					continue
				}
				return nil, fmt.Errorf("take over idempotency key: %w", err)
			}
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		return b, nil
	}
}

func (g *Gateway) getOwned(ctx context.Context, id string) (*kilnv1.Build, error) {
	if !buildstore.ValidID(id) {
		return nil, status.Errorf(codes.NotFound, "build %q not found", id)
	}
	b, _, err := g.builds.Get(ctx, id)
	if errors.Is(err, buildstore.ErrNotFound) || (err == nil && b.Tenant != tenantOf(ctx)) {
		return nil, status.Errorf(codes.NotFound, "build %q not found", id)
	}
	return b, err
}

// GetBuild returns a build's record.
func (g *Gateway) GetBuild(ctx context.Context, req *kilnv1.GetBuildRequest) (*kilnv1.GetBuildResponse, error) {
	b, err := g.getOwned(ctx, req.BuildId)
	if err != nil {
		return nil, err
	}
	return &kilnv1.GetBuildResponse{Build: forClient(b)}, nil
}

// CancelBuild cancels a queued build at once; a running one is asked to
// stop through its agent (buildstore.Cancel, the path the scheduler's
// timeouts take too). Cancelling a finished build returns it unchanged.
func (g *Gateway) CancelBuild(ctx context.Context, req *kilnv1.CancelBuildRequest) (*kilnv1.CancelBuildResponse, error) {
	if _, err := g.getOwned(ctx, req.BuildId); err != nil {
		return nil, err
	}
	b, outcome, err := g.builds.Cancel(ctx, req.BuildId, buildstore.Cancellation{Error: "cancelled before it started"})
	if err != nil {
		return nil, err
	}
	switch {
	case outcome == buildstore.CancelEnded:
		buildsCancelledQueued.Inc()
	case b.CancelRequested && !buildstore.Terminal(b.State):
		// The agent reads the request at its next lease renewal; this
		// tells it now (again, if the cancel is asked for again).
		if err := g.conn.NC.Publish(bus.CancelSubject(b.Id), nil); err != nil {
			return nil, fmt.Errorf("send cancel to agent: %w", err)
		}
	}
	if outcome != buildstore.CancelUnchanged {
		g.log.InfoContext(ctx, "build cancel requested", "build_id", b.Id, "state", b.State.String())
	}
	return &kilnv1.CancelBuildResponse{Build: forClient(b)}, nil
}
