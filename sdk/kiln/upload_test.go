package kiln

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/sdk/internal/farmtest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

func dial(t *testing.T, addr string, opts ...Option) *Client {
	t.Helper()
	c, err := Dial(t.Context(), addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func randomBytes(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestUploadContextSendsMissingBlobsOnce(t *testing.T) {
	farm := farmtest.Start(t, farmtest.WithToken("s3cret"))
	client := dial(t, farm.Addr, WithToken("s3cret"))

	big := randomBytes(t, 2*UploadChunkSize+12345)
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{
		"Dockerfile":    "FROM scratch\nCOPY . /\n",
		"same-1":        "same content",
		"sub/same-2":    "same content",
		"on-the-farm":   "uploaded by an earlier build",
		"empty":         "",
		"link-to-big":   "->big",
		"sub/deeper/x/": "",
	})
	if err := os.WriteFile(filepath.Join(dir, "big"), big, 0o644); err != nil {
		t.Fatal(err)
	}
	present := farm.Put([]byte("uploaded by an earlier build"))
	bc := pack(t, dir, "")

	var progress []ContextProgress
	stats, err := client.UploadContext(t.Context(), bc, WithUploadProgress(func(p ContextProgress) { progress = append(progress, p) }))
	if err != nil {
		t.Fatalf("UploadContext: %v", err)
	}

	same := farmtest.Digest([]byte("same content"))
	dockerfile := farmtest.Digest([]byte("FROM scratch\nCOPY . /\n"))
	bigDigest := farmtest.Digest(big)
	empty := farmtest.Digest(nil)
	uploaded := []*kilnv1.Digest{same, dockerfile, bigDigest, empty}
	tests := []struct {
		name   string
		digest *kilnv1.Digest
		want   int
	}{
		{name: "identical files are uploaded once", digest: same, want: 1},
		{name: "Dockerfile", digest: dockerfile, want: 1},
		{name: "big file", digest: bigDigest, want: 1},
		{name: "empty file", digest: empty, want: 1},
		{name: "blob already on the farm is not uploaded", digest: present, want: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := farm.Uploads(tt.digest.Hash); got != tt.want {
				t.Errorf("uploaded %d times, want %d", got, tt.want)
			}
			if _, ok := farm.Blob(tt.digest.Hash); !ok {
				t.Error("not stored on the farm")
			}
		})
	}
	if n := farm.TotalUploads(); n != len(uploaded) {
		t.Errorf("%d blobs uploaded, want %d", n, len(uploaded))
	}
	if n := farm.Streams(); n != 1 {
		t.Errorf("%d UploadBlobs streams, want 1", n)
	}
	if got, want := farm.Chunks(bigDigest.Hash), []int{UploadChunkSize, UploadChunkSize, 12345}; !slices.Equal(got, want) {
		t.Errorf("big file chunks %v, want %v", got, want)
	}
	if stored, _ := farm.Blob(bigDigest.Hash); !bytes.Equal(stored, big) {
		t.Error("the stored big blob differs from the file")
	}

	var uploadedBytes int64
	for _, d := range uploaded {
		uploadedBytes += d.SizeBytes
	}
	total := bc.Stats().Bytes
	wantStats := UploadStats{Files: 6, Bytes: total, Blobs: 4, UploadedBytes: uploadedBytes, PresentBytes: total - uploadedBytes}
	if stats != wantStats {
		t.Errorf("UploadStats %+v, want %+v", stats, wantStats)
	}
	if last := progress[len(progress)-1]; last != (ContextProgress{Files: 4, TotalFiles: 4, Bytes: uploadedBytes, TotalBytes: uploadedBytes}) {
		t.Errorf("last upload progress %+v", last)
	}

	ref := bc.Ref()
	if ref.GetFormat() != kilnv1.ContextFormat_CONTEXT_FORMAT_MANIFEST {
		t.Fatalf("Ref() = %v, want a manifest reference", ref)
	}
	m, err := farm.Manifest(ref)
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(m, bc.Manifest()) {
		t.Fatalf("the farm stored another manifest under %s", ref.GetDigest().GetHash())
	}

	t.Run("second upload sends only the manifest", func(t *testing.T) {
		again, err := client.UploadContext(t.Context(), bc)
		if err != nil {
			t.Fatalf("second UploadContext: %v", err)
		}
		if again.Blobs != 0 || again.UploadedBytes != 0 || again.PresentBytes != total {
			t.Errorf("second upload stats %+v", again)
		}
		if n := farm.Streams(); n != 1 {
			t.Errorf("second upload opened a stream (%d in all)", n)
		}
		if !proto.Equal(bc.Ref(), ref) {
			t.Errorf("Ref() changed to %v", bc.Ref())
		}
	})
}

func TestUploadContextFileChanged(t *testing.T) {
	farm := farmtest.Start(t)
	client := dial(t, farm.Addr)
	tests := []struct {
		name    string
		content string
		change  func(t *testing.T, path string)
	}{
		{name: "rewritten with the same size", content: "original", change: func(t *testing.T, p string) { writeFile(t, p, "modified") }},
		{name: "grew", content: "original", change: func(t *testing.T, p string) { writeFile(t, p, "original plus more") }},
		{name: "shrank", content: "original", change: func(t *testing.T, p string) { writeFile(t, p, "orig") }},
		{name: "emptied", content: "original", change: func(t *testing.T, p string) { writeFile(t, p, "") }},
		{name: "empty file filled", content: "", change: func(t *testing.T, p string) { writeFile(t, p, "x") }},
		{name: "removed", content: "original", change: func(t *testing.T, p string) {
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "big file changed in its last chunk", content: strings.Repeat("z", UploadChunkSize+10), change: func(t *testing.T, p string) {
			writeFile(t, p, strings.Repeat("z", UploadChunkSize+9)+"!")
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			writeTree(t, dir, map[string]string{"Dockerfile": "FROM scratch\n" + tt.name, "data/file": tt.content})
			bc := pack(t, dir, "", withClock(inAnHour))
			if _, err := os.Stat(bc.cacheFile); err != nil {
				t.Fatalf("no stat cache after PackContext: %v", err)
			}
			path := filepath.Join(bc.Dir(), "data", "file")
			tt.change(t, path)

			stats, err := client.UploadContext(t.Context(), bc)
			var changed *FileChangedError
			if !errors.As(err, &changed) {
				t.Fatalf("UploadContext: %v, want a *FileChangedError", err)
			}
			want := `uploading context: file "` + path + `" changed while kiln was uploading it; run the build again`
			if err.Error() != want {
				t.Errorf("error %q\nwant %q", err, want)
			}
			if status.Code(err) != codes.Aborted {
				t.Errorf("code %v, want Aborted", status.Code(err))
			}
			if d := entry(t, bc, "data/file").Digest; farm.Uploads(d.Hash) != 0 {
				t.Error("the farm stored the file's blob")
			}
			if bc.Ref() != nil {
				t.Errorf("Ref() = %v after a failed upload", bc.Ref())
			}
			if stats.Blobs == 0 {
				t.Errorf("stats %+v: the file was not missing", stats)
			}
			if _, err := os.Stat(bc.cacheFile); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("the stat cache survived the mismatch (%v)", err)
			}
		})
	}
}

func TestUploadContextKeepsStatusCode(t *testing.T) {
	farm := farmtest.Start(t, farmtest.WithToken("s3cret"))
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
			_, err := dial(t, farm.Addr, tt.opts...).UploadContext(t.Context(), bc)
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

func TestBuildStartsFromTheUploadedManifest(t *testing.T) {
	farm := farmtest.Start(t)
	client := dial(t, farm.Addr)
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{"Dockerfile": "FROM scratch\nCOPY app /\n", "app": "#!/bin/sh\n"})
	bc := pack(t, dir, "")

	if _, err := client.start(t.Context(), BuildRequest{Context: bc, IdempotencyKey: "k"}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("start before UploadContext: %v, want InvalidArgument", err)
	}
	b, err := runBuild(t.Context(), client, BuildRequest{Context: bc})
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	if b.GetState() != kilnv1.BuildState_BUILD_STATE_SUCCEEDED {
		t.Fatalf("build %v", b)
	}
	builds := farm.Builds()
	if len(builds) != 1 || !proto.Equal(builds[0].GetContext(), bc.Ref()) || builds[0].GetSpec().GetDockerfile() != "Dockerfile" {
		t.Fatalf("farm builds %v, want one of context %v", builds, bc.Ref())
	}
}

// A unix socket is sent as BuildKit sends it, an empty file with the
// socket's permission bits, and its blob comes from memory: the upload
// never opens (or connects to) the socket.
func TestUploadContextSocket(t *testing.T) {
	farm := farmtest.Start(t)
	client := dial(t, farm.Addr)
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{"Dockerfile": "FROM scratch\nCOPY . /\n"})
	sock := filepath.Join(dir, "sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	if err := os.Chmod(sock, 0o750); err != nil {
		t.Fatal(err)
	}
	accepted := make(chan struct{})
	go func() {
		if c, err := l.Accept(); err == nil {
			c.Close()
			close(accepted)
		}
	}()

	bc := pack(t, dir, "")
	e := entry(t, bc, "sock")
	empty := farmtest.Digest(nil)
	if e.Type != kilnv1.EntryType_ENTRY_TYPE_FILE || !e.Socket || e.Mode != 0o750 || e.Size != 0 || e.GetDigest().GetHash() != empty.Hash {
		t.Fatalf("socket entry %v; want an empty FILE marked socket, mode 0750, digest %s", e, empty.Hash)
	}
	if _, err := client.UploadContext(t.Context(), bc); err != nil {
		t.Fatalf("UploadContext: %v", err)
	}
	if got := farm.Uploads(empty.Hash); got != 1 {
		t.Errorf("empty blob uploaded %d times, want 1", got)
	}
	if data, ok := farm.Blob(empty.Hash); !ok || len(data) != 0 {
		t.Errorf("empty blob stored: %v, %d bytes", ok, len(data))
	}
	select {
	case <-accepted:
		t.Error("the upload connected to the socket")
	default:
	}
}
