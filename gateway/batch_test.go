package gateway

import (
	"fmt"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

// batchOf is a BatchUpdateBlobs request of files (path → content).
func batchOf(files map[string][]byte) *kilnv1.BatchUpdateBlobsRequest {
	req := &kilnv1.BatchUpdateBlobsRequest{}
	for p, data := range files {
		req.Blobs = append(req.Blobs, &kilnv1.BatchUpdateBlobsRequest_Blob{Digest: digestOf(data), Data: data, Path: p})
	}
	return req
}

func smallFiles(prefix string, n int) map[string][]byte {
	files := map[string][]byte{}
	for i := range n {
		files[fmt.Sprintf("%s/f%04d.txt", prefix, i)] = []byte(fmt.Sprintf("%s line %d\n", prefix, i))
	}
	return files
}

// TestBatchUpdateBlobsStoresChargesAndDedups: a batch of the files
// PutManifest said were missing is stored and charged once; the next
// manifest sharing them lacks only its new file, and a batch sent again
// is accepted without a second charge.
func TestBatchUpdateBlobsStoresChargesAndDedups(t *testing.T) {
	h := startCASGateway(t, DefaultLimits)
	ctx := t.Context()
	files := smallFiles("a", 300)
	resp, err := h.contexts.PutManifest(ctx, &kilnv1.PutManifestRequest{Manifest: manifestOf(files)})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Missing) != len(files) {
		t.Fatalf("a fresh farm lacks %d of %d files", len(resp.Missing), len(files))
	}
	before, _ := h.g.usage.Get(ctx, defaultTenant) // the manifest
	out, err := h.contexts.BatchUpdateBlobs(ctx, batchOf(files))
	if err != nil {
		t.Fatalf("BatchUpdateBlobs: %v", err)
	}
	if len(out.Stored) != len(files) {
		t.Fatalf("stored %d of %d blobs", len(out.Stored), len(files))
	}
	var bytes int64
	for _, data := range files {
		bytes += int64(len(data))
	}
	used, _ := h.g.usage.Get(ctx, defaultTenant)
	if used-before != bytes {
		t.Fatalf("the batch was charged %d bytes, want %d", used-before, bytes)
	}

	more := smallFiles("a", 300)
	more["new.txt"] = []byte("only this one is new\n")
	resp, err = h.contexts.PutManifest(ctx, &kilnv1.PutManifestRequest{Manifest: manifestOf(more)})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Missing) != 1 || resp.Missing[0].Hash != digestOf(more["new.txt"]).Hash {
		t.Fatalf("a context sharing 300 stored files lacks %v, want only new.txt", resp.Missing)
	}
	used, _ = h.g.usage.Get(ctx, defaultTenant)
	if _, err := h.contexts.BatchUpdateBlobs(ctx, batchOf(files)); err != nil {
		t.Fatalf("BatchUpdateBlobs again: %v", err)
	}
	if again, _ := h.g.usage.Get(ctx, defaultTenant); again != used {
		t.Fatalf("a batch of stored blobs changed the usage from %d to %d", used, again)
	}
}

// TestBatchUpdateBlobsDigestMismatchStoresNothing: one file whose bytes do
// not match its digest makes the batch InvalidArgument naming that file,
// and none of the batch's blobs is stored or charged.
func TestBatchUpdateBlobsDigestMismatchStoresNothing(t *testing.T) {
	h := startCASGateway(t, DefaultLimits)
	ctx := t.Context()
	files := smallFiles("b", 50)
	req := batchOf(files)
	bad := req.Blobs[17]
	bad.Data = append([]byte("tampered "), bad.Data[9:]...) // same size, other bytes
	_, err := h.contexts.BatchUpdateBlobs(ctx, req)
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), bad.Path) {
		t.Fatalf("BatchUpdateBlobs with a tampered blob = %v, want InvalidArgument naming %s", err, bad.Path)
	}
	for p, data := range files {
		if ok, err := h.g.blobs.Has(ctx, digestOf(data).Hash, -1); err != nil || ok {
			t.Fatalf("%s of the refused batch: stored = %v, %v", p, ok, err)
		}
	}
	if used, _ := h.g.usage.Get(ctx, defaultTenant); used != 0 {
		t.Fatalf("a refused batch left a charge of %d bytes", used)
	}

	// A blob declared at one size and sent at another is refused too.
	req = batchOf(map[string][]byte{"short.txt": []byte("short\n")})
	req.Blobs[0].Digest.SizeBytes++
	if _, err := h.contexts.BatchUpdateBlobs(ctx, req); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("BatchUpdateBlobs with a wrong size = %v, want InvalidArgument", err)
	}
}

// TestBatchUpdateBlobsOverQuotaStoresNothing: a batch that would take the
// tenant over its quota is ResourceExhausted, nothing of it is stored, the
// usage is what it was, and the blobs already stored still count once.
func TestBatchUpdateBlobsOverQuotaStoresNothing(t *testing.T) {
	limits := DefaultLimits
	limits.CAS.Quota = 1000
	h := startCASGateway(t, limits)
	ctx := t.Context()
	first := map[string][]byte{"first.txt": []byte(strings.Repeat("a", 700))}
	if _, err := h.contexts.BatchUpdateBlobs(ctx, batchOf(first)); err != nil {
		t.Fatalf("a batch within the quota: %v", err)
	}
	over := map[string][]byte{
		"first.txt": first["first.txt"], // stored: not charged again
		"x.txt":     []byte(strings.Repeat("x", 150)),
		"y.txt":     []byte(strings.Repeat("y", 150)),
		"z.txt":     []byte(strings.Repeat("z", 150)),
	}
	_, err := h.contexts.BatchUpdateBlobs(ctx, batchOf(over))
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("a batch over the quota = %v, want ResourceExhausted", err)
	}
	for _, p := range []string{"x.txt", "y.txt", "z.txt"} {
		if ok, _ := h.g.blobs.Has(ctx, digestOf(over[p]).Hash, -1); ok {
			t.Fatalf("%s of a batch over the quota was stored", p)
		}
	}
	if used, _ := h.g.usage.Get(ctx, defaultTenant); used != 700 {
		t.Fatalf("usage after a refused batch = %d, want 700", used)
	}
	// Within the quota once one file less is sent: 700 + 300.
	delete(over, "z.txt")
	if _, err := h.contexts.BatchUpdateBlobs(ctx, batchOf(over)); err != nil {
		t.Fatalf("a batch up to the quota: %v", err)
	}
	if used, _ := h.g.usage.Get(ctx, defaultTenant); used != 1000 {
		t.Fatalf("usage = %d, want 1000", used)
	}
}
