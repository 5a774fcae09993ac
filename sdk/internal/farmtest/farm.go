// Package farmtest runs an in-memory kiln gateway (ContextService and the
// part of BuildService the CLI uses) on a loopback listener, for the SDK's
// tests. It is honest where a client could get away with a mistake:
// manifests are checked with the farm's rules, every blob is verified
// against its digest before it is stored, and a build starts only when its
// manifest and every blob the manifest names are stored. Builds succeed at
// once.
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
type Farm struct {
	// Addr is the loopback address the farm listens on.
	Addr  string
	token string
	// secretsKey is the farm's secrets key pair; nil without WithSecretsKey.
	secretsKey *seal.PrivateKey

	mu sync.Mutex // guards the fields below
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

// Start runs a Farm until the test ends.
func Start(t testing.TB, opts ...Option) *Farm {
	t.Helper()
	f := &Farm{blobs: map[string][]byte{}, uploads: map[string]int{}, chunks: map[string][]int{}, nonces: map[string]bool{}}
	for _, opt := range opts {
		opt(f)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.Addr = lis.Addr().String()
	srv := grpc.NewServer()
	kilnv1.RegisterContextServiceServer(srv, contextService{f: f})
	kilnv1.RegisterBuildServiceServer(srv, buildService{f: f})
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return f
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
		s.f.mu.Unlock()
		resp.Stored = append(resp.Stored, cur)
		cur = nil
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

// StartBuild records a build that has already succeeded, once its context
// is complete on the farm.
func (s buildService) StartBuild(ctx context.Context, req *kilnv1.StartBuildRequest) (*kilnv1.StartBuildResponse, error) {
	if err := s.f.authorize(ctx); err != nil {
		return nil, err
	}
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
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	if n := string(spec.GetSealNonce()); n != "" && (len(spec.GetSecrets()) > 0 || len(spec.GetRegistryAuth()) > 0) {
		if s.f.nonces[n] {
			return nil, status.Error(codes.AlreadyExists, "seal_nonce was already used by another build")
		}
		s.f.nonces[n] = true
	}
	b := &kilnv1.Build{
		Id:      fmt.Sprintf("b%d", len(s.f.builds)+1),
		Tenant:  Tenant,
		Spec:    req.GetSpec(),
		Context: req.GetContext(),
		State:   kilnv1.BuildState_BUILD_STATE_SUCCEEDED,
		Agent:   "agent-1",
		Result:  &kilnv1.BuildResult{ImageId: "sha256:" + fmt.Sprintf("%064d", len(s.f.builds)+1)},
	}
	s.f.builds = append(s.f.builds, b)
	return &kilnv1.StartBuildResponse{Build: b}, nil
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

// WatchBuild sends a build's two events: queued, then succeeded.
func (s buildService) WatchBuild(req *kilnv1.WatchBuildRequest, stream kilnv1.BuildService_WatchBuildServer) error {
	b, err := s.build(stream.Context(), req.GetBuildId())
	if err != nil {
		return err
	}
	events := []*kilnv1.BuildEvent{
		{Sequence: 1, BuildId: b.GetId(), Attempt: 1, Event: &kilnv1.BuildEvent_State{
			State: &kilnv1.StateChanged{State: kilnv1.BuildState_BUILD_STATE_QUEUED, Attempt: 1}}},
		{Sequence: 2, BuildId: b.GetId(), Attempt: 1, Event: &kilnv1.BuildEvent_Finished{
			Finished: &kilnv1.BuildFinished{State: b.GetState(), Result: b.GetResult(), Agent: b.GetAgent()}}},
	}
	for _, ev := range events {
		if ev.GetSequence() < req.GetFromSequence() {
			continue
		}
		if err := stream.Send(&kilnv1.WatchBuildResponse{Event: ev}); err != nil {
			return err
		}
	}
	return nil
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
