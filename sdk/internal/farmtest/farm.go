// Package farmtest runs kiln farms for the SDK's tests. StartKilnd runs a
// real one: the kilnd binary, building on the local Docker engine. Start
// runs an in-memory kiln gateway (ContextService and the part of
// BuildService the CLI uses) on a loopback listener, for tests of what
// the client does on the wire: it is honest where a client could get away
// with a mistake: manifests are checked with the farm's rules, every blob
// is verified against its digest before it is stored, a build starts only
// when its manifest and every blob the manifest names are stored, and an
// idempotency key names one build. Its builds succeed at once, or run
// until the test ends them (WithHeldBuilds). Several gateways can serve
// one farm and be stopped one by one (StartReplica, Stop), for failover
// tests.
package farmtest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules/seal"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// Farm is the in-memory gateway. Its methods are safe for concurrent use.
// Several Farms can serve one farm's state, as several gateways serve one
// NATS cluster (StartReplica), and each can be stopped on its own (Stop).
type Farm struct {
	// Addr is the loopback address the farm listens on.
	Addr string
	*state

	listenAddr string
	serverOpts []grpc.ServerOption
	srv        *grpc.Server
	stopOnce   sync.Once
	served     chan struct{}
	// watching counts this gateway's WatchBuild streams, calls the calls
	// it served, and watchFroms the from_sequence of each WatchBuild it
	// served; guarded by mu.
	watching   int
	calls      int
	watchFroms []uint64
}

// state is what the gateways of one farm share.
type state struct {
	token string
	// secretsKey is the farm's secrets key pair; nil without WithSecretsKey.
	secretsKey *seal.PrivateKey
	// hold leaves started builds running (WithHeldBuilds).
	hold bool

	mu sync.Mutex // guards the fields below
	// changed is closed and replaced on every change, for Await and
	// WatchBuild.
	changed chan struct{}
	// events holds each build's event log.
	events map[string][]*kilnv1.BuildEvent
	// idem maps idempotency keys to the builds they started.
	idem map[string]*kilnv1.Build
	// startCalls counts StartBuild calls that reached a gateway.
	startCalls int
	// crashNextStart makes the next StartBuild stop its gateway once the
	// build is queued, before answering.
	crashNextStart bool
	// crashUploadAfter, when positive, makes the next UploadBlobs stream
	// that stored that many blobs stop its gateway.
	crashUploadAfter int
	// blobs holds verified blobs by digest hash, manifests included.
	blobs map[string][]byte
	// uploads counts the verified uploads of each blob.
	uploads map[string]int
	// chunks holds the chunk sizes of each blob's last upload.
	chunks map[string][]int
	// streams counts UploadBlobs calls.
	streams int
	builds  []*kilnv1.Build
	// nonces holds the seal nonces of the builds started, as the gateway
	// remembers them.
	nonces map[string]bool
}

// Tenant is the tenant the farm serves every caller as: GetSecretsKey names
// it, and builds carry it.
const Tenant = "farmtest"

// Option configures a Farm.
type Option func(*Farm)

// WithToken makes the farm refuse calls without "authorization: Bearer
// <token>" (codes.Unauthenticated).
func WithToken(token string) Option {
	return func(f *Farm) { f.token = token }
}

// WithSecretsKey gives the farm a secrets key: GetSecretsKey returns its
// public half and OpenSecret opens what clients sealed to it. Without it,
// GetSecretsKey fails with codes.FailedPrecondition, as a farm without a
// key does.
func WithSecretsKey() Option {
	return func(f *Farm) {
		k, err := seal.GenerateKey(nil)
		if err != nil {
			panic(err)
		}
		f.secretsKey = k
	}
}

// SecretsKeyID returns the id of the farm's secrets key.
func (f *Farm) SecretsKeyID() string { return f.secretsKey.KeyID() }

// OpenSecret opens a sealed secret (or registry credential) of build b as
// an agent does: for b's tenant and seal nonce and the secret's id.
func (f *Farm) OpenSecret(b *kilnv1.Build, s *kilnv1.SealedSecret) ([]byte, error) {
	if f.secretsKey == nil {
		return nil, errors.New("the farm has no secrets key")
	}
	if s.GetKeyId() != f.SecretsKeyID() {
		return nil, fmt.Errorf("secret %q is sealed to key %q, not the farm's %q", s.GetId(), s.GetKeyId(), f.SecretsKeyID())
	}
	v, err := f.secretsKey.Open(seal.Binding{Tenant: b.GetTenant(), Nonce: b.GetSpec().GetSealNonce(), ID: s.GetId()}, s.GetSealed())
	if err != nil {
		return nil, fmt.Errorf("secret %q: %w", s.GetId(), err)
	}
	return v, nil
}

// WithHeldBuilds makes started builds run until the test ends them: a
// build starts RUNNING with one event (its state), the test adds log lines
// with Log and ends it with Finish, and WatchBuild follows the log live.
func WithHeldBuilds() Option {
	return func(f *Farm) { f.hold = true }
}

// WithListenAddr makes the farm listen on addr ("127.0.0.2:0", or a
// given port) instead of 127.0.0.1 and a free port.
func WithListenAddr(addr string) Option {
	return func(f *Farm) { f.listenAddr = addr }
}

// WithServerOptions adds gRPC server options, grpc.Creds for TLS say.
func WithServerOptions(opts ...grpc.ServerOption) Option {
	return func(f *Farm) { f.serverOpts = append(f.serverOpts, opts...) }
}

// Start runs a Farm until the test ends.
func Start(t testing.TB, opts ...Option) *Farm {
	t.Helper()
	f := &Farm{state: &state{
		blobs: map[string][]byte{}, uploads: map[string]int{}, chunks: map[string][]int{}, nonces: map[string]bool{},
		changed: make(chan struct{}), events: map[string][]*kilnv1.BuildEvent{}, idem: map[string]*kilnv1.Build{},
	}}
	for _, opt := range opts {
		opt(f)
	}
	f.serve(t)
	return f
}

// StartReplica runs another gateway of the farm of: it serves the same
// blobs, builds and event logs, with the same token and secrets key. Of
// the options, only WithListenAddr and WithServerOptions apply.
func StartReplica(t testing.TB, of *Farm, opts ...Option) *Farm {
	t.Helper()
	f := &Farm{state: of.state}
	for _, opt := range opts {
		opt(f)
	}
	f.state = of.state // an option may not swap the state
	f.serve(t)
	return f
}

func (f *Farm) serve(t testing.TB) {
	t.Helper()
	addr := f.listenAddr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	f.Addr = lis.Addr().String()
	count := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		f.mu.Lock()
		f.calls++
		f.mu.Unlock()
		return handler(ctx, req)
	}
	countStream := func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		f.mu.Lock()
		f.calls++
		f.mu.Unlock()
		return handler(srv, ss)
	}
	opts := append([]grpc.ServerOption{grpc.ChainUnaryInterceptor(count), grpc.ChainStreamInterceptor(countStream)}, f.serverOpts...)
	f.srv = grpc.NewServer(opts...)
	kilnv1.RegisterContextServiceServer(f.srv, contextService{f: f})
	kilnv1.RegisterBuildServiceServer(f.srv, buildService{f: f})
	f.served = make(chan struct{})
	go func() {
		defer close(f.served)
		_ = f.srv.Serve(lis)
	}()
	t.Cleanup(f.Stop)
}

// Stop stops this gateway as a crash would: it closes its listener and
// every connection, so that its clients' calls in flight fail with
// codes.Unavailable and new connections are refused. The farm's state
// lives on in its other gateways.
func (f *Farm) Stop() {
	f.stopOnce.Do(func() {
		f.srv.Stop()
		<-f.served
	})
}

// notifyLocked wakes Await and WatchBuild; f.mu is held.
func (s *state) notifyLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

// Await returns once cond holds, checking it after every change to the
// farm (a blob stored, a build started, an event added, a watch begun or
// ended), or ctx's error. cond must not block.
func (f *Farm) Await(ctx context.Context, cond func() bool) error {
	for {
		f.mu.Lock()
		ch := f.changed
		f.mu.Unlock()
		if cond() {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		}
	}
}

// Calls returns how many calls this gateway has served.
func (f *Farm) Calls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

// WatchFroms returns the from_sequence of each WatchBuild call this
// gateway served, in order.
func (f *Farm) WatchFroms() []uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]uint64(nil), f.watchFroms...)
}

// CrashUploadAfter makes the next UploadBlobs stream, on whichever gateway
// of the farm, stop its gateway once it has stored n blobs, before it
// reads more.
func (f *Farm) CrashUploadAfter(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.crashUploadAfter = n
}

// Watching returns how many WatchBuild streams this gateway is serving.
func (f *Farm) Watching() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.watching
}

// StartCalls returns how many StartBuild calls reached the farm's
// gateways.
func (f *Farm) StartCalls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.startCalls
}

// CrashNextStart makes the next StartBuild, on whichever gateway of the
// farm, queue its build and then stop that gateway before it answers: the
// client sees codes.Unavailable for a build that exists.
func (f *Farm) CrashNextStart() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.crashNextStart = true
}

// Events returns the event log of a build.
func (f *Farm) Events(buildID string) []*kilnv1.BuildEvent {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*kilnv1.BuildEvent(nil), f.events[buildID]...)
}

// Log adds a log line to a held build's event log and returns its
// sequence.
func (f *Farm) Log(buildID, text string) uint64 {
	return f.appendEvent(buildID, &kilnv1.BuildEvent{Event: &kilnv1.BuildEvent_Log{Log: &kilnv1.LogLine{Step: 1, Text: text}}})
}

// Finish ends a held build in state st (SUCCEEDED, FAILED or CANCELLED)
// with its finished event.
func (f *Farm) Finish(buildID string, st kilnv1.BuildState) {
	f.mu.Lock()
	for i, b := range f.builds {
		if b.GetId() != buildID {
			continue
		}
		// A new record: the old one may be on its way to a client.
		nb := proto.CloneOf(b)
		nb.State = st
		if st == kilnv1.BuildState_BUILD_STATE_SUCCEEDED {
			nb.Result = &kilnv1.BuildResult{ImageId: "sha256:" + fmt.Sprintf("%064d", i+1)}
		}
		f.builds[i] = nb
		if nb.GetIdempotencyKey() != "" {
			f.idem[nb.GetIdempotencyKey()] = nb
		}
	}
	f.mu.Unlock()
	f.appendEvent(buildID, &kilnv1.BuildEvent{Event: &kilnv1.BuildEvent_Finished{Finished: &kilnv1.BuildFinished{State: st, Agent: "agent-1"}}})
}

func (f *Farm) appendEvent(buildID string, ev *kilnv1.BuildEvent) uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.appendEventLocked(buildID, ev)
}

func (s *state) appendEventLocked(buildID string, ev *kilnv1.BuildEvent) uint64 {
	ev.BuildId = buildID
	ev.Attempt = 1
	ev.Sequence = uint64(len(s.events[buildID]) + 1)
	s.events[buildID] = append(s.events[buildID], ev)
	s.notifyLocked()
	return ev.Sequence
}

// Digest returns the digest of data as the farm names blobs.
func Digest(data []byte) *kilnv1.Digest {
	sum := sha256.Sum256(data)
	return &kilnv1.Digest{Hash: "sha256:" + hex.EncodeToString(sum[:]), SizeBytes: int64(len(data))}
}

// Put stores data as a blob, as if an earlier build had uploaded it.
func (f *Farm) Put(data []byte) *kilnv1.Digest {
	d := Digest(data)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.blobs[d.Hash] = bytes.Clone(data)
	return d
}

// Blob returns the stored blob with the given hash.
func (f *Farm) Blob(hash string) ([]byte, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	b, ok := f.blobs[hash]
	return b, ok
}

// Uploads returns how many times the blob with the given hash was uploaded.
func (f *Farm) Uploads(hash string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.uploads[hash]
}

// TotalUploads returns how many blobs were uploaded, counting repeats.
func (f *Farm) TotalUploads() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, c := range f.uploads {
		n += c
	}
	return n
}

// Chunks returns the chunk sizes of the last upload of a blob.
func (f *Farm) Chunks(hash string) []int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.chunks[hash]
}

// Streams returns how many UploadBlobs streams were opened.
func (f *Farm) Streams() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.streams
}

// Manifest returns the stored manifest a build's context names.
func (f *Farm) Manifest(ref *kilnv1.ContextRef) (*kilnv1.ContextManifest, error) {
	if ref.GetFormat() != kilnv1.ContextFormat_CONTEXT_FORMAT_MANIFEST {
		return nil, status.Errorf(codes.InvalidArgument, "context format %s, want CONTEXT_FORMAT_MANIFEST", ref.GetFormat())
	}
	data, ok := f.Blob(ref.GetDigest().GetHash())
	if !ok {
		return nil, status.Errorf(codes.FailedPrecondition, "context manifest %s is not stored", ref.GetDigest().GetHash())
	}
	m := &kilnv1.ContextManifest{}
	if err := proto.Unmarshal(data, m); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "context manifest does not decode: %v", err)
	}
	return m, nil
}

// Builds returns the builds started, oldest first.
func (f *Farm) Builds() []*kilnv1.Build {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*kilnv1.Build(nil), f.builds...)
}

func (f *Farm) authorize(ctx context.Context) error {
	if f.token == "" {
		return nil
	}
	md, _ := metadata.FromIncomingContext(ctx)
	if got := md.Get("authorization"); len(got) != 1 || got[0] != "Bearer "+f.token {
		return status.Errorf(codes.Unauthenticated, "bad or missing bearer token %q", got)
	}
	return nil
}

type contextService struct {
	kilnv1.UnimplementedContextServiceServer
	f *Farm
}

var _ kilnv1.ContextServiceServer = contextService{}

// PutManifest checks and stores the manifest and lists every file entry
// whose blob is missing, duplicates included: deduplicating is the
// client's job.
func (s contextService) PutManifest(ctx context.Context, req *kilnv1.PutManifestRequest) (*kilnv1.PutManifestResponse, error) {
	if err := s.f.authorize(ctx); err != nil {
		return nil, err
	}
	if err := CheckManifest(req.GetManifest()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	data, err := proto.MarshalOptions{Deterministic: true}.Marshal(req.GetManifest())
	if err != nil {
		return nil, status.Errorf(codes.Internal, "encoding manifest: %v", err)
	}
	resp := &kilnv1.PutManifestResponse{Digest: s.f.Put(data)}
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	for _, e := range req.GetManifest().GetEntries() {
		if e.GetType() != kilnv1.EntryType_ENTRY_TYPE_FILE {
			continue
		}
		resp.TotalBytes += e.GetSize()
		if _, ok := s.f.blobs[e.GetDigest().GetHash()]; !ok {
			resp.Missing = append(resp.Missing, e.GetDigest())
		}
	}
	return resp, nil
}

func (s contextService) FindMissingBlobs(ctx context.Context, req *kilnv1.FindMissingBlobsRequest) (*kilnv1.FindMissingBlobsResponse, error) {
	if err := s.f.authorize(ctx); err != nil {
		return nil, err
	}
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	resp := &kilnv1.FindMissingBlobsResponse{}
	for _, d := range req.GetDigests() {
		if _, ok := s.f.blobs[d.GetHash()]; !ok {
			resp.Missing = append(resp.Missing, d)
		}
	}
	return resp, nil
}

// UploadBlobs stores each blob once its bytes hash to its digest; a blob
// the stream leaves unfinished is dropped.
func (s contextService) UploadBlobs(stream kilnv1.ContextService_UploadBlobsServer) error {
	if err := s.f.authorize(stream.Context()); err != nil {
		return err
	}
	s.f.mu.Lock()
	s.f.streams++
	crashAfter := s.f.crashUploadAfter
	s.f.crashUploadAfter = 0
	s.f.mu.Unlock()
	var (
		cur    *kilnv1.Digest
		buf    bytes.Buffer
		chunks []int
		resp   kilnv1.UploadBlobsResponse
	)
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		switch {
		case cur == nil && msg.GetDigest() == nil:
			return status.Error(codes.InvalidArgument, "the first message of a blob must carry its digest")
		case cur == nil:
			cur = msg.GetDigest()
			buf.Reset()
			chunks = nil
		case msg.GetDigest() != nil && msg.GetDigest().GetHash() != cur.GetHash():
			return status.Errorf(codes.InvalidArgument, "blob %s ended without finish_write; got a chunk of %s", cur.GetHash(), msg.GetDigest().GetHash())
		}
		if msg.GetWriteOffset() != int64(buf.Len()) {
			return status.Errorf(codes.InvalidArgument, "blob %s: chunk at offset %d, expected offset %d", cur.GetHash(), msg.GetWriteOffset(), buf.Len())
		}
		if int64(buf.Len()+len(msg.GetData())) > cur.GetSizeBytes() {
			return status.Errorf(codes.InvalidArgument, "blob %s: more bytes sent than its declared size %d", cur.GetHash(), cur.GetSizeBytes())
		}
		buf.Write(msg.GetData())
		chunks = append(chunks, len(msg.GetData()))
		resp.BytesReceived += int64(len(msg.GetData()))
		if !msg.GetFinishWrite() {
			continue
		}
		if got := Digest(buf.Bytes()); got.Hash != cur.GetHash() || got.SizeBytes != cur.GetSizeBytes() {
			return status.Errorf(codes.InvalidArgument, "blob %s of %d bytes: got %s of %d bytes", cur.GetHash(), cur.GetSizeBytes(), got.Hash, got.SizeBytes)
		}
		s.f.mu.Lock()
		s.f.blobs[cur.GetHash()] = bytes.Clone(buf.Bytes())
		s.f.uploads[cur.GetHash()]++
		s.f.chunks[cur.GetHash()] = chunks
		s.f.notifyLocked()
		s.f.mu.Unlock()
		resp.Stored = append(resp.Stored, cur)
		cur = nil
		if len(resp.Stored) == crashAfter {
			go s.f.Stop()
			<-stream.Context().Done()
			return status.FromContextError(stream.Context().Err()).Err()
		}
	}
	if cur != nil {
		return status.Errorf(codes.InvalidArgument, "blob %s ended without finish_write", cur.GetHash())
	}
	return stream.SendAndClose(&resp)
}

type buildService struct {
	kilnv1.UnimplementedBuildServiceServer
	f *Farm
}

var _ kilnv1.BuildServiceServer = buildService{}

// StartBuild records a build, once its context is complete on the farm:
// one that has already succeeded, or a running one with WithHeldBuilds. A
// repeated idempotency key returns the build it started.
func (s buildService) StartBuild(ctx context.Context, req *kilnv1.StartBuildRequest) (*kilnv1.StartBuildResponse, error) {
	if err := s.f.authorize(ctx); err != nil {
		return nil, err
	}
	s.f.mu.Lock()
	s.f.startCalls++
	s.f.mu.Unlock()
	m, err := s.f.Manifest(req.GetContext())
	if err != nil {
		return nil, err
	}
	for _, e := range m.GetEntries() {
		if d := e.GetDigest(); d != nil {
			if _, ok := s.f.Blob(d.GetHash()); !ok {
				return nil, status.Errorf(codes.FailedPrecondition, "blob %s of context entry %q is not stored", d.GetHash(), e.GetPath())
			}
		}
	}
	spec := req.GetSpec()
	if len(spec.GetSecrets()) > 0 || len(spec.GetRegistryAuth()) > 0 {
		if err := seal.CheckNonce(spec.GetSealNonce()); err != nil {
			return nil, status.Error(codes.InvalidArgument, err.Error())
		}
	}
	b, crash, err := s.f.queue(req)
	if err != nil {
		return nil, err
	}
	if crash {
		go s.f.Stop()
		<-ctx.Done()
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	return &kilnv1.StartBuildResponse{Build: b}, nil
}

// queue records the build req asks for, or returns the one its
// idempotency key started, and says whether the gateway is to crash.
func (s *state) queue(req *kilnv1.StartBuildRequest) (b *kilnv1.Build, crash bool, err error) {
	spec := req.GetSpec()
	s.mu.Lock()
	defer s.mu.Unlock()
	if b, ok := s.idem[req.GetIdempotencyKey()]; ok && req.GetIdempotencyKey() != "" {
		return b, false, nil
	}
	if n := string(spec.GetSealNonce()); n != "" && (len(spec.GetSecrets()) > 0 || len(spec.GetRegistryAuth()) > 0) {
		if s.nonces[n] {
			return nil, false, status.Error(codes.AlreadyExists, "seal_nonce was already used by another build")
		}
		s.nonces[n] = true
	}
	b = &kilnv1.Build{
		Id:             fmt.Sprintf("b%d", len(s.builds)+1),
		Tenant:         Tenant,
		Spec:           req.GetSpec(),
		Context:        req.GetContext(),
		IdempotencyKey: req.GetIdempotencyKey(),
		State:          kilnv1.BuildState_BUILD_STATE_SUCCEEDED,
		Agent:          "agent-1",
		Result:         &kilnv1.BuildResult{ImageId: "sha256:" + fmt.Sprintf("%064d", len(s.builds)+1)},
	}
	if s.hold {
		b.State, b.Result = kilnv1.BuildState_BUILD_STATE_RUNNING, nil
	}
	s.builds = append(s.builds, b)
	if req.GetIdempotencyKey() != "" {
		s.idem[req.GetIdempotencyKey()] = b
	}
	s.appendEventLocked(b.Id, &kilnv1.BuildEvent{Event: &kilnv1.BuildEvent_State{
		State: &kilnv1.StateChanged{State: b.State, Attempt: 1}}})
	if !s.hold {
		s.appendEventLocked(b.Id, &kilnv1.BuildEvent{Event: &kilnv1.BuildEvent_Finished{
			Finished: &kilnv1.BuildFinished{State: b.GetState(), Result: b.GetResult(), Agent: b.GetAgent()}}})
	}
	crash, s.crashNextStart = s.crashNextStart, false
	return b, crash, nil
}

// GetSecretsKey returns the farm's secrets public key (see WithSecretsKey).
func (s buildService) GetSecretsKey(ctx context.Context, _ *kilnv1.GetSecretsKeyRequest) (*kilnv1.GetSecretsKeyResponse, error) {
	if err := s.f.authorize(ctx); err != nil {
		return nil, err
	}
	if s.f.secretsKey == nil {
		return nil, status.Error(codes.FailedPrecondition, "this farm has no secrets key configured")
	}
	pub := s.f.secretsKey.PublicKey()
	return &kilnv1.GetSecretsKeyResponse{PublicKey: pub[:], KeyId: s.f.SecretsKeyID(), Tenant: Tenant}, nil
}

func (s buildService) build(ctx context.Context, id string) (*kilnv1.Build, error) {
	if err := s.f.authorize(ctx); err != nil {
		return nil, err
	}
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	for _, b := range s.f.builds {
		if b.GetId() == id {
			return b, nil
		}
	}
	return nil, status.Errorf(codes.NotFound, "build %s not found", id)
}

// WatchBuild sends a build's events from from_sequence on, as they are
// added, until its finished event.
func (s buildService) WatchBuild(req *kilnv1.WatchBuildRequest, stream kilnv1.BuildService_WatchBuildServer) error {
	ctx := stream.Context()
	if _, err := s.build(ctx, req.GetBuildId()); err != nil {
		return err
	}
	s.f.mu.Lock()
	s.f.watching++
	s.f.watchFroms = append(s.f.watchFroms, req.GetFromSequence())
	s.f.notifyLocked()
	s.f.mu.Unlock()
	defer func() {
		s.f.mu.Lock()
		s.f.watching--
		s.f.notifyLocked()
		s.f.mu.Unlock()
	}()
	next := max(req.GetFromSequence(), 1)
	for {
		s.f.mu.Lock()
		log, changed := s.f.events[req.GetBuildId()], s.f.changed
		s.f.mu.Unlock()
		for _, ev := range log[min(int(next-1), len(log)):] {
			if err := stream.Send(&kilnv1.WatchBuildResponse{Event: ev}); err != nil {
				return err
			}
			next = ev.GetSequence() + 1
			if ev.GetFinished() != nil {
				return nil
			}
		}
		if req.GetNoFollow() {
			return nil // the log so far
		}
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-changed:
		}
	}
}

func (s buildService) GetBuild(ctx context.Context, req *kilnv1.GetBuildRequest) (*kilnv1.GetBuildResponse, error) {
	b, err := s.build(ctx, req.GetBuildId())
	if err != nil {
		return nil, err
	}
	return &kilnv1.GetBuildResponse{Build: b}, nil
}

func (s buildService) CancelBuild(ctx context.Context, req *kilnv1.CancelBuildRequest) (*kilnv1.CancelBuildResponse, error) {
	b, err := s.build(ctx, req.GetBuildId())
	if err != nil {
		return nil, err
	}
	return &kilnv1.CancelBuildResponse{Build: b}, nil
}

func (s buildService) ListBuilds(ctx context.Context, _ *kilnv1.ListBuildsRequest) (*kilnv1.ListBuildsResponse, error) {
	if err := s.f.authorize(ctx); err != nil {
		return nil, err
	}
	return &kilnv1.ListBuildsResponse{Builds: s.f.Builds()}, nil
}

// ClosedAddr returns a loopback address nothing listens on.
func ClosedAddr(t testing.TB) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	return addr
}
