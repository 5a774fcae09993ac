package kiln

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// blobStore is a minimal ContextService: it keeps verified blobs in memory
// and records how each upload was chunked. It checks the bearer token when
// one is set.
type blobStore struct {
	kilnv1.UnimplementedContextServiceServer
	token string

	mu      sync.Mutex
	blobs   map[string][]byte
	uploads [][]int // chunk sizes per UploadBlobs call
}

func (s *blobStore) authorize(ctx context.Context) error {
	if s.token == "" {
		return nil
	}
	md, _ := metadata.FromIncomingContext(ctx)
	if got := md.Get("authorization"); len(got) != 1 || got[0] != "Bearer "+s.token {
		return status.Errorf(codes.Unauthenticated, "bad or missing bearer token %q", got)
	}
	return nil
}

func (s *blobStore) FindMissingBlobs(ctx context.Context, req *kilnv1.FindMissingBlobsRequest) (*kilnv1.FindMissingBlobsResponse, error) {
	if err := s.authorize(ctx); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	resp := &kilnv1.FindMissingBlobsResponse{}
	for _, d := range req.GetDigests() {
		if _, ok := s.blobs[d.GetHash()]; !ok {
			resp.Missing = append(resp.Missing, d)
		}
	}
	return resp, nil
}

func (s *blobStore) UploadBlobs(stream kilnv1.ContextService_UploadBlobsServer) error {
	if err := s.authorize(stream.Context()); err != nil {
		return err
	}
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
		if cur == nil {
			if msg.GetDigest() == nil {
				return status.Error(codes.InvalidArgument, "first message of a blob has no digest")
			}
			cur = msg.GetDigest()
			buf.Reset()
			chunks = nil
		}
		if msg.GetWriteOffset() != int64(buf.Len()) {
			return status.Errorf(codes.InvalidArgument, "write_offset %d, want %d", msg.GetWriteOffset(), buf.Len())
		}
		buf.Write(msg.GetData())
		chunks = append(chunks, len(msg.GetData()))
		resp.BytesReceived += int64(len(msg.GetData()))
		if !msg.GetFinishWrite() {
			continue
		}
		sum := sha256.Sum256(buf.Bytes())
		if got := "sha256:" + hex.EncodeToString(sum[:]); got != cur.GetHash() || int64(buf.Len()) != cur.GetSizeBytes() {
			return status.Errorf(codes.InvalidArgument, "blob %s: got %s of %d bytes", cur.GetHash(), got, buf.Len())
		}
		s.mu.Lock()
		s.blobs[cur.GetHash()] = bytes.Clone(buf.Bytes())
		s.uploads = append(s.uploads, chunks)
		s.mu.Unlock()
		resp.Stored = append(resp.Stored, cur)
		cur = nil
	}
	if cur != nil {
		return status.Error(codes.InvalidArgument, "stream ended without finish_write")
	}
	return stream.SendAndClose(&resp)
}

// serveBlobStore runs s on a loopback listener and returns its address.
func serveBlobStore(t *testing.T, s *blobStore) string {
	t.Helper()
	s.blobs = map[string][]byte{}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	kilnv1.RegisterContextServiceServer(srv, s)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return lis.Addr().String()
}

func dial(t *testing.T, addr string, opts ...Option) *Client {
	t.Helper()
	c, err := Dial(addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestUploadContextChunksAndSkipsPresentBlobs(t *testing.T) {
	store := &blobStore{token: "s3cret"}
	addr := serveBlobStore(t, store)
	client := dial(t, addr, WithToken("s3cret"))

	dir := t.TempDir()
	big := make([]byte, 2*UploadChunkSize+12345)
	if _, err := rand.Read(big); err != nil {
		t.Fatal(err)
	}
	writeTree(t, dir, map[string]string{"Dockerfile": "FROM scratch\nCOPY big /\n"})
	if err := os.WriteFile(filepath.Join(dir, "big"), big, 0o644); err != nil {
		t.Fatal(err)
	}
	bc := pack(t, dir, "")

	n, err := client.UploadContext(t.Context(), bc)
	if err != nil {
		t.Fatalf("UploadContext: %v", err)
	}
	if n != bc.Size() {
		t.Fatalf("uploaded %d bytes, context is %d", n, bc.Size())
	}
	store.mu.Lock()
	stored := store.blobs[bc.Digest()]
	uploads := store.uploads
	store.mu.Unlock()
	if len(uploads) != 1 {
		t.Fatalf("%d uploads, want 1", len(uploads))
	}
	chunks := uploads[0]
	for i, size := range chunks[:len(chunks)-1] {
		if size != UploadChunkSize {
			t.Errorf("chunk %d is %d bytes, want %d", i, size, UploadChunkSize)
		}
	}
	if want := int((bc.Size() + UploadChunkSize - 1) / UploadChunkSize); len(chunks) != want {
		t.Errorf("%d chunks, want %d", len(chunks), want)
	}
	r, err := bc.Open()
	if err != nil {
		t.Fatal(err)
	}
	local, err := io.ReadAll(r)
	r.Close()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(stored, local) {
		t.Fatal("the stored blob differs from the packed context")
	}
	if !bytes.Contains(stored, big[:4096]) {
		t.Fatal("the stored tar does not hold the big file")
	}

	again, err := client.UploadContext(t.Context(), bc)
	if err != nil {
		t.Fatalf("second UploadContext: %v", err)
	}
	if again != 0 {
		t.Errorf("second upload sent %d bytes, want 0", again)
	}
	store.mu.Lock()
	defer store.mu.Unlock()
	if len(store.uploads) != 1 {
		t.Errorf("second upload streamed the blob again (%d uploads)", len(store.uploads))
	}
}

func TestUploadContextKeepsStatusCode(t *testing.T) {
	addr := serveBlobStore(t, &blobStore{token: "s3cret"})
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{"Dockerfile": "FROM scratch"})
	bc := pack(t, dir, "")

	tests := []struct {
		name string
		opts []Option
		code codes.Code
	}{
		{name: "no token", code: codes.Unauthenticated},
		{name: "wrong token", opts: []Option{WithToken("guess")}, code: codes.Unauthenticated},
		{name: "right token", opts: []Option{WithToken("s3cret")}, code: codes.OK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := dial(t, addr, tt.opts...).UploadContext(t.Context(), bc)
			if got := status.Code(err); got != tt.code {
				t.Fatalf("code %v (%v), want %v", got, err, tt.code)
			}
			if err == nil {
				return
			}
			if !strings.HasPrefix(err.Error(), "uploading context") {
				t.Errorf("error %q lacks the context prefix", err)
			}
			if s, ok := status.FromError(err); !ok || s.Code() != tt.code {
				t.Errorf("status.FromError = %v, %v", s, ok)
			}
		})
	}
}

func TestUploadContextUnreachable(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()

	dir := t.TempDir()
	writeTree(t, dir, map[string]string{"Dockerfile": "FROM scratch"})
	_, err = dial(t, addr).UploadContext(t.Context(), pack(t, dir, ""))
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("code %v (%v), want Unavailable", status.Code(err), err)
	}
}
