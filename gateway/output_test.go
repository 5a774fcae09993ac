package gateway

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules/buildctx"
	"github.com/kilnbuild/kiln/services/bus"
)

// outputsBucket opens KILN_OUTPUTS, creating it when bus.Setup does not.
func outputsBucket(t *testing.T, f *authFarm) jetstream.ObjectStore {
	t.Helper()
	store, err := f.conn.JS.ObjectStore(t.Context(), bus.BucketOutputs)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		store, err = f.conn.JS.CreateObjectStore(t.Context(), jetstream.ObjectStoreConfig{Bucket: bus.BucketOutputs})
	}
	if err != nil {
		t.Fatal(err)
	}
	return store
}

// putOutput stores data in KILN_OUTPUTS under digest's object name.
func putOutput(t *testing.T, store jetstream.ObjectStore, digest string, data []byte) {
	t.Helper()
	if _, err := store.PutBytes(t.Context(), outputObject(digest), data); err != nil {
		t.Fatal(err)
	}
}

// readOutput reads a whole ReadOutput stream, checking every chunk is at
// most 1 MiB, and returns the data and the number of chunks.
func readOutput(t *testing.T, c kilnv1.BuildServiceClient, token, id string, d *kilnv1.Digest, offset int64) ([]byte, int, error) {
	stream, err := c.ReadOutput(as(t.Context(), token), &kilnv1.ReadOutputRequest{BuildId: id, Digest: d, Offset: offset})
	if err != nil {
		return nil, 0, err
	}
	var data []byte
	chunks := 0
	for {
		resp, err := stream.Recv()
		if err == io.EOF {
			return data, chunks, nil
		}
		if err != nil {
			return data, chunks, err
		}
		if len(resp.Data) > outputChunk {
			return nil, 0, errors.New("a chunk is over 1 MiB")
		}
		chunks++
		data = append(data, resp.Data...)
	}
}

// TestReadOutput: the owner and an admin read an output's manifest and
// blobs whole and from an offset, in chunks of at most 1 MiB; another
// tenant, a blob the output does not list, a build without output and an
// expired bucket are NotFound; corrupt stored bytes are DataLoss, logged.
func TestReadOutput(t *testing.T) {
	f := startAuthFarm(t)
	c := kilnv1.NewBuildServiceClient(f.dial(t))
	store := outputsBucket(t, f)

	big := bytes.Repeat([]byte("0123456789abcdef"), (5<<20)/32) // 2.5 MiB
	small := []byte("hello\n")
	stranger := []byte("not part of the output\n")
	m := &kilnv1.ContextManifest{Entries: []*kilnv1.ContextEntry{
		{Path: "big", Type: kilnv1.EntryType_ENTRY_TYPE_FILE, Mode: 0o644, Size: int64(len(big)), Digest: digestOf(big)},
		{Path: "small", Type: kilnv1.EntryType_ENTRY_TYPE_FILE, Mode: 0o755, Size: int64(len(small)), Digest: digestOf(small)},
	}}
	mdata, err := buildctx.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	md := digestOf(mdata)
	putOutput(t, store, md.Hash, mdata)
	putOutput(t, store, digestOf(big).Hash, big)
	putOutput(t, store, digestOf(small).Hash, small)
	putOutput(t, store, digestOf(stranger).Hash, stranger)

	built := f.start(t, c, tokenA, "registry.example.com/team-a/out:1")
	changeRecord(t, f.conn, built.Id, func(b *kilnv1.Build) {
		b.State = kilnv1.BuildState_BUILD_STATE_SUCCEEDED
		b.Result = &kilnv1.BuildResult{Output: &kilnv1.OutputRef{Type: "local", Manifest: md, Size: int64(len(big) + len(small))}}
	})

	for _, tc := range []struct {
		token  string
		d      *kilnv1.Digest
		offset int64
		want   []byte
	}{
		{tokenA, md, 0, mdata},
		{tokenA2, digestOf(small), 0, small},
		{tokenAdmin, digestOf(small), 2, small[2:]},
		{tokenA, digestOf(big), 0, big},
		{tokenA, digestOf(big), 1<<20 + 7, big[1<<20+7:]},
		{tokenA, digestOf(big), int64(len(big)), nil},
	} {
		got, chunks, err := readOutput(t, c, tc.token, built.Id, tc.d, tc.offset)
		if err != nil {
			t.Fatalf("ReadOutput(%s from %d): %v", tc.d.Hash, tc.offset, err)
		}
		if !bytes.Equal(got, tc.want) {
			t.Fatalf("ReadOutput(%s from %d) = %d bytes, want %d", tc.d.Hash, tc.offset, len(got), len(tc.want))
		}
		if min := (len(tc.want) + outputChunk - 1) / outputChunk; chunks != min {
			t.Errorf("ReadOutput(%s from %d) sent %d chunks, want %d", tc.d.Hash, tc.offset, chunks, min)
		}
	}

	queued := f.start(t, c, tokenA, "registry.example.com/team-a/queued:1")
	for _, tc := range []struct {
		what, token, id string
		d               *kilnv1.Digest
		offset          int64
		code            codes.Code
		msg             string
	}{
		{"another tenant", tokenB, built.Id, md, 0, codes.NotFound, "not found"},
		{"a blob the output does not list", tokenA, built.Id, digestOf(stranger), 0, codes.NotFound, "not part of this build's output"},
		{"a build without output", tokenA, queued.Id, md, 0, codes.NotFound, "has no output"},
		{"an unknown build", tokenA, "not-a-build", md, 0, codes.NotFound, "not found"},
		{"a malformed digest", tokenA, built.Id, &kilnv1.Digest{Hash: "sha256:xyz"}, 0, codes.InvalidArgument, "sha256:<64 hex digits>"},
		{"an offset past the end", tokenA, built.Id, digestOf(small), 99, codes.OutOfRange, "past the end"},
		{"a negative offset", tokenA, built.Id, digestOf(small), -1, codes.InvalidArgument, "negative"},
	} {
		_, _, err := readOutput(t, c, tc.token, tc.id, tc.d, tc.offset)
		if status.Code(err) != tc.code || !strings.Contains(status.Convert(err).Message(), tc.msg) {
			t.Errorf("ReadOutput of %s: %v, want %s with %q", tc.what, err, tc.code, tc.msg)
		}
	}

	// A blob whose stored bytes are not its digest's: DataLoss, logged.
	corrupt := []byte("what the agent meant to store\n")
	m.Entries = append(m.Entries, &kilnv1.ContextEntry{Path: "z", Type: kilnv1.EntryType_ENTRY_TYPE_FILE, Mode: 0o644, Size: int64(len(corrupt)), Digest: digestOf(corrupt)})
	mdata2, _ := buildctx.Marshal(m)
	putOutput(t, store, digestOf(mdata2).Hash, mdata2)
	putOutput(t, store, digestOf(corrupt).Hash, []byte("what the agent meant to stor3\n"))
	changeRecord(t, f.conn, built.Id, func(b *kilnv1.Build) { b.Result.Output.Manifest = digestOf(mdata2) })
	if _, _, err := readOutput(t, c, tokenA, built.Id, digestOf(corrupt), 0); status.Code(err) != codes.DataLoss {
		t.Errorf("ReadOutput of a corrupt blob: %v, want DataLoss", err)
	}
	if !strings.Contains(f.logs.String(), "output blob does not match its digest") {
		t.Errorf("the corrupt blob was not logged: %s", f.logs.String())
	}

	// A blob whose chunks are gone (an upload failed after its meta): DataLoss.
	partly := bytes.Repeat([]byte("partly stored "), 10_000)
	m.Entries = append(m.Entries, &kilnv1.ContextEntry{Path: "zz", Type: kilnv1.EntryType_ENTRY_TYPE_FILE, Mode: 0o644, Size: int64(len(partly)), Digest: digestOf(partly)})
	mdata3, _ := buildctx.Marshal(m)
	putOutput(t, store, digestOf(mdata3).Hash, mdata3)
	info, err := store.Put(t.Context(), jetstream.ObjectMeta{Name: outputObject(digestOf(partly).Hash), Opts: &jetstream.ObjectMetaOptions{ChunkSize: 32 << 10}}, bytes.NewReader(partly))
	if err != nil {
		t.Fatal(err)
	}
	objStream, err := f.conn.JS.Stream(t.Context(), "OBJ_"+bus.BucketOutputs)
	if err != nil {
		t.Fatal(err)
	}
	if err := objStream.Purge(t.Context(), jetstream.WithPurgeSubject("$O."+bus.BucketOutputs+".C."+info.NUID)); err != nil {
		t.Fatal(err)
	}
	changeRecord(t, f.conn, built.Id, func(b *kilnv1.Build) { b.Result.Output.Manifest = digestOf(mdata3) })
	if _, _, err := readOutput(t, c, tokenA, built.Id, digestOf(partly), 0); status.Code(err) != codes.DataLoss || !strings.Contains(err.Error(), "incomplete") {
		t.Errorf("ReadOutput of an incomplete blob: %v, want DataLoss saying incomplete", err)
	}

	// The bucket gone (its TTL passed for every object, or deleted): expired.
	if err := f.conn.JS.DeleteObjectStore(t.Context(), bus.BucketOutputs); err != nil {
		t.Fatal(err)
	}
	if _, _, err := readOutput(t, c, tokenA, built.Id, digestOf(small), 0); status.Code(err) != codes.NotFound || !strings.Contains(err.Error(), "output expired") {
		t.Errorf("ReadOutput after the bucket went: %v, want NotFound output expired", err)
	}
}

// TestStartBuildChecksOutputs: StartBuild refuses outputs the rule
// refuses with InvalidArgument, storing no build, and takes a valid one.
func TestStartBuildChecksOutputs(t *testing.T) {
	f := startAuthFarm(t)
	c := kilnv1.NewBuildServiceClient(f.dial(t))
	for _, tc := range []struct {
		outs []*kilnv1.Output
		msg  string
	}{
		{[]*kilnv1.Output{{Type: "s3"}}, `"s3" is not an output type`},
		{[]*kilnv1.Output{{Type: "local", Attrs: map[string]string{"dest": "/etc"}}}, "stays on the client"},
		{[]*kilnv1.Output{{Type: "local"}, {Type: "tar"}}, "one output per build"},
		{[]*kilnv1.Output{{Type: "registry"}}, "is a push"},
		{[]*kilnv1.Output{{Type: "oci"}}, "holds one image"},
	} {
		spec := &kilnv1.BuildSpec{Dockerfile: "Dockerfile", Outputs: tc.outs}
		if tc.outs[0].Type == "oci" {
			spec.Platforms, spec.Push, spec.Tags = []string{"linux/amd64", "linux/arm64"}, true, []string{"registry.example.com/team-a/app:1"}
		}
		_, err := c.StartBuild(as(t.Context(), tokenA), &kilnv1.StartBuildRequest{
			Spec: spec, Context: f.ref,
		})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("StartBuild with outputs %v: %v, want InvalidArgument with %q", tc.outs, err, tc.msg)
		}
	}
	list, err := c.ListBuilds(as(t.Context(), tokenA), &kilnv1.ListBuildsRequest{})
	if err != nil || len(list.Builds) != 0 {
		t.Fatalf("refused builds were stored: %v %v", list, err)
	}
	resp, err := c.StartBuild(as(t.Context(), tokenA), &kilnv1.StartBuildRequest{
		Spec: &kilnv1.BuildSpec{Dockerfile: "Dockerfile", Outputs: []*kilnv1.Output{{Type: "tar"}}}, Context: f.ref,
	})
	if err != nil {
		t.Fatalf("StartBuild with a tar output: %v", err)
	}
	if got := resp.Build.GetSpec().GetOutputs(); len(got) != 1 || got[0].Type != "tar" {
		t.Errorf("the build's spec has outputs %v, want type=tar", got)
	}
}
