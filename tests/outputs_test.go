package tests

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"

	"github.com/kilnbuild/kiln/agent/enginetest"
	"github.com/kilnbuild/kiln/gateway"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules/buildctx"
	kilnsdk "github.com/kilnbuild/kiln/sdk/kiln"
	"github.com/kilnbuild/kiln/services/bus"
	"github.com/kilnbuild/kiln/services/bus/bustest"
	"github.com/kilnbuild/kiln/services/cas"
)

// This file tests --output: the client's download of a build's export
// (kiln build --output, kiln output) against a real gateway on an
// in-process NATS server whose KILN_OUTPUTS the test fills as an agent
// would, and, on the real farm, the same files as docker build -o.

// outputFarm is a real gateway on an in-process NATS server.
type outputFarm struct {
	conn   *bus.Conn
	addr   string
	builds kilnv1.BuildServiceClient
	ref    *kilnv1.ContextRef
	store  jetstream.ObjectStore
	n      int
}

func startOutputFarm(t *testing.T) *outputFarm {
	t.Helper()
	ctx := t.Context()
	conn := bustest.Conn(t)
	g, err := gateway.New(ctx, gateway.Config{Conn: conn, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := g.NewGRPCServer()
	served := make(chan struct{})
	go func() { defer close(served); _ = gs.Serve(lis) }()
	t.Cleanup(func() { gs.Stop(); <-served })
	cc, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })

	var tarball bytes.Buffer
	tw := tar.NewWriter(&tarball)
	df := []byte("FROM scratch\n")
	_ = tw.WriteHeader(&tar.Header{Name: "Dockerfile", Mode: 0o644, Size: int64(len(df)), Typeflag: tar.TypeReg})
	_, _ = tw.Write(df)
	_ = tw.Close()
	blobs, err := cas.Open(ctx, conn.JS)
	if err != nil {
		t.Fatal(err)
	}
	d := digestOfBytes(tarball.Bytes())
	if err := blobs.Put(ctx, d.Hash, d.SizeBytes, bytes.NewReader(tarball.Bytes())); err != nil {
		t.Fatal(err)
	}
	store, err := conn.JS.ObjectStore(ctx, bus.BucketOutputs)
	if err != nil {
		t.Fatal(err)
	}
	return &outputFarm{conn: conn, addr: lis.Addr().String(), builds: kilnv1.NewBuildServiceClient(cc),
		ref: &kilnv1.ContextRef{Digest: d, Format: kilnv1.ContextFormat_CONTEXT_FORMAT_TAR}, store: store}
}

func digestOfBytes(data []byte) *kilnv1.Digest {
	sum := sha256.Sum256(data)
	return &kilnv1.Digest{Hash: "sha256:" + hex.EncodeToString(sum[:]), SizeBytes: int64(len(data))}
}

// outEntry is one path of a test output: a file (content), a directory
// (dir), a symlink (symlink) or a hard link to an earlier file (hardlink).
type outEntry struct {
	path, content, symlink, hardlink string
	dir                              bool
	mode                             uint32
}

// put stores an output of typ listing entries, as an agent does, and
// returns its ref.
func (f *outputFarm) put(t *testing.T, typ string, entries []outEntry) *kilnv1.OutputRef {
	t.Helper()
	m := &kilnv1.ContextManifest{}
	var size int64
	for _, e := range entries {
		ce := &kilnv1.ContextEntry{Path: e.path, Mode: e.mode, MtimeUnix: 1_700_000_000}
		switch {
		case e.dir:
			ce.Type = kilnv1.EntryType_ENTRY_TYPE_DIRECTORY
		case e.symlink != "":
			ce.Type, ce.LinkTarget = kilnv1.EntryType_ENTRY_TYPE_SYMLINK, e.symlink
		case e.hardlink != "":
			ce.Type, ce.LinkTarget = kilnv1.EntryType_ENTRY_TYPE_HARDLINK, e.hardlink
		default:
			ce.Type, ce.Size, ce.Digest = kilnv1.EntryType_ENTRY_TYPE_FILE, int64(len(e.content)), digestOfBytes([]byte(e.content))
			f.putBlob(t, []byte(e.content))
			size += ce.Size
		}
		m.Entries = append(m.Entries, ce)
	}
	sort.Slice(m.Entries, func(i, j int) bool { return m.Entries[i].Path < m.Entries[j].Path })
	data, err := buildctx.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	f.putBlob(t, data)
	return &kilnv1.OutputRef{Type: typ, Manifest: digestOfBytes(data), Size: size}
}

func (f *outputFarm) putBlob(t *testing.T, data []byte) {
	t.Helper()
	name := strings.Replace(digestOfBytes(data).Hash, ":", "/", 1)
	if _, err := f.store.PutBytes(t.Context(), name, data); err != nil {
		t.Fatal(err)
	}
}

// build starts a build and rewrites its record with change, as the farm
// would once it has run it.
func (f *outputFarm) build(t *testing.T, change func(b *kilnv1.Build)) *kilnv1.Build {
	t.Helper()
	f.n++ // identical builds in flight would merge
	resp, err := f.builds.StartBuild(t.Context(), &kilnv1.StartBuildRequest{
		Spec: &kilnv1.BuildSpec{Labels: map[string]string{"n": fmt.Sprint(f.n)}}, Context: f.ref,
	})
	if err != nil {
		t.Fatal(err)
	}
	kv, err := f.conn.JS.KeyValue(t.Context(), bus.BucketBuilds)
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(t.Context(), resp.Build.Id)
	if err != nil {
		t.Fatal(err)
	}
	b := &kilnv1.Build{}
	if err := proto.Unmarshal(e.Value(), b); err != nil {
		t.Fatal(err)
	}
	change(b)
	data, _ := proto.Marshal(b)
	if _, err := kv.Update(t.Context(), b.Id, data, e.Revision()); err != nil {
		t.Fatal(err)
	}
	return b
}

// succeededWith returns a change that ends a build SUCCEEDED with output out.
func succeededWith(out *kilnv1.OutputRef) func(*kilnv1.Build) {
	return func(b *kilnv1.Build) {
		b.State = kilnv1.BuildState_BUILD_STATE_SUCCEEDED
		b.Result = &kilnv1.BuildResult{Output: out}
	}
}

func (f *outputFarm) client(t *testing.T) *kilnsdk.Client {
	t.Helper()
	c, err := kilnsdk.Dial(t.Context(), f.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// testOutput is an output with what a local export holds: modes with
// setuid, a read-only directory, symlinks (one absolute, never followed),
// a hard link, two files with the same content, an empty file and a blob
// over ReadOutput's 1 MiB chunk.
func testOutput() []outEntry {
	big := strings.Repeat("0123456789abcdef", (5<<20)/32+3) // 2.5 MiB and a bit
	return []outEntry{
		{path: "abs", symlink: "/etc/passwd", mode: 0o777},
		{path: "big", content: big, mode: 0o644},
		{path: "bin", dir: true, mode: 0o755},
		{path: "bin/tool", content: "#!/bin/sh\necho hi\n", mode: 0o4755},
		{path: "data", dir: true, mode: 0o555},
		{path: "data/readme", content: "read me\n", mode: 0o444},
		{path: "dup1", content: "same\n", mode: 0o600},
		{path: "dup2", content: "same\n", mode: 0o640},
		{path: "empty", content: "", mode: 0o644},
		{path: "hard", hardlink: "big", mode: 0o644},
		{path: "link", symlink: "bin/tool", mode: 0o777},
	}
}

// treeEntry is what a test compares of one path: type, mode, content or
// link target.
type treeEntry struct {
	typ  string
	mode fs.FileMode
	data string
}

func (e treeEntry) String() string { return fmt.Sprintf("%s %v %.40q", e.typ, e.mode, e.data) }

// wantTree is the tree entries should give, hard links as the file they
// share.
func wantTree(entries []outEntry) map[string]treeEntry {
	out := map[string]treeEntry{}
	content := map[string]string{}
	for _, e := range entries {
		mode := fs.FileMode(e.mode & 0o777)
		if e.mode&0o4000 != 0 {
			mode |= fs.ModeSetuid
		}
		switch {
		case e.dir:
			out[e.path] = treeEntry{"dir", mode, ""}
		case e.symlink != "":
			out[e.path] = treeEntry{"symlink", 0, e.symlink}
		case e.hardlink != "":
			out[e.path] = out[e.hardlink]
		default:
			out[e.path] = treeEntry{"file", mode, e.content}
			content[e.path] = e.content
		}
	}
	return out
}

// readTree lists dir as treeEntries (symlinks' modes are not compared).
func readTree(t *testing.T, dir string) map[string]treeEntry {
	t.Helper()
	out := map[string]treeEntry{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		mode := fi.Mode() & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
		switch {
		case fi.IsDir():
			out[filepath.ToSlash(rel)] = treeEntry{"dir", mode, ""}
		case fi.Mode()&fs.ModeSymlink != 0:
			target, _ := os.Readlink(p)
			out[filepath.ToSlash(rel)] = treeEntry{"symlink", 0, target}
		case fi.Mode().IsRegular():
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			out[filepath.ToSlash(rel)] = treeEntry{"file", mode, string(data)}
		default:
			out[filepath.ToSlash(rel)] = treeEntry{"other", mode, ""}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// readTar lists a tar as treeEntries, hard links as the file they share,
// names without a trailing slash.
func readTar(t *testing.T, data []byte) map[string]treeEntry {
	t.Helper()
	out := map[string]treeEntry{}
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("reading the tar: %v", err)
		}
		name := strings.TrimSuffix(strings.TrimPrefix(hdr.Name, "./"), "/")
		if name == "" || name == "." {
			continue
		}
		mode := fs.FileMode(hdr.Mode & 0o777)
		if hdr.Mode&0o4000 != 0 {
			mode |= fs.ModeSetuid
		}
		if hdr.Mode&0o2000 != 0 {
			mode |= fs.ModeSetgid
		}
		if hdr.Mode&0o1000 != 0 {
			mode |= fs.ModeSticky
		}
		switch hdr.Typeflag {
		case tar.TypeDir:
			out[name] = treeEntry{"dir", mode, ""}
		case tar.TypeSymlink:
			out[name] = treeEntry{"symlink", 0, hdr.Linkname}
		case tar.TypeLink:
			out[name] = out[strings.TrimPrefix(hdr.Linkname, "./")]
		case tar.TypeReg:
			body, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			out[name] = treeEntry{"file", mode, string(body)}
		default:
			out[name] = treeEntry{fmt.Sprintf("type %c", hdr.Typeflag), mode, ""}
		}
	}
}

func diffTrees(t *testing.T, what string, got, want map[string]treeEntry) {
	t.Helper()
	for p, w := range want {
		if g, ok := got[p]; !ok || g != w {
			t.Errorf("%s: %s is %v, want %v", what, p, g, w)
		}
	}
	for p, g := range got {
		if _, ok := want[p]; !ok {
			t.Errorf("%s: %s (%v) should not be there", what, p, g)
		}
	}
}

// TestOutputDownload: a local output lands as its manifest says (modes,
// symlinks as they are, hard links linked, read-only directories), a run
// again fetches nothing, an interrupted blob resumes from its partial
// download, a corrupt partial is discarded, and nothing is written
// outside the directory through a symlink already there or a manifest
// path; the same output as a tar, through the SDK and kiln output to a
// file and to stdout, holds the same entries.
func TestOutputDownload(t *testing.T) {
	t.Parallel()
	f := startOutputFarm(t)
	c := f.client(t)
	ctx := t.Context()
	entries := testOutput()
	b := f.build(t, succeededWith(f.put(t, "local", entries)))
	big := []byte(entries[1].content)
	uniqueBytes := int64(len(big) + len("#!/bin/sh\necho hi\n") + len("read me\n") + len("same\n"))

	dir := filepath.Join(t.TempDir(), "out")
	st, err := c.DownloadOutput(ctx, b, kilnsdk.OutputTarget{Path: dir})
	if err != nil {
		t.Fatal(err)
	}
	diffTrees(t, "local output", readTree(t, dir), wantTree(entries))
	if st.Files != 6 || st.FetchedBytes != uniqueBytes || st.Present != 0 {
		t.Errorf("first download: %+v, want 6 files, %d bytes fetched", st, uniqueBytes)
	}
	a, _ := os.Stat(filepath.Join(dir, "big"))
	h, _ := os.Stat(filepath.Join(dir, "hard"))
	if !os.SameFile(a, h) {
		t.Error("hard is not a hard link to big")
	}

	// Again: every file is in place, nothing is fetched.
	st, err = c.DownloadOutput(ctx, b, kilnsdk.OutputTarget{Path: dir})
	if err != nil || st.Present != 6 || st.FetchedBytes != 0 {
		t.Fatalf("second download: %+v, %v; want 6 files present, none fetched", st, err)
	}

	// Interrupted in the middle of big: the rest is fetched from there.
	if err := os.Remove(filepath.Join(dir, "big")); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(dir, "hard"))
	staging := filepath.Join(dir, ".kiln-download")
	partial := filepath.Join(staging, strings.TrimPrefix(digestOfBytes(big).Hash, "sha256:")+".kiln-partial")
	if err := os.MkdirAll(staging, 0o700); err != nil {
		t.Fatal(err)
	}
	const done = 1<<20 + 3
	if err := os.WriteFile(partial, big[:done], 0o600); err != nil {
		t.Fatal(err)
	}
	st, err = c.DownloadOutput(ctx, b, kilnsdk.OutputTarget{Path: dir})
	if err != nil || st.Resumed != 1 || st.FetchedBytes != int64(len(big)-done) {
		t.Fatalf("resumed download: %+v, %v; want 1 resumed, %d bytes fetched", st, err, len(big)-done)
	}
	diffTrees(t, "resumed local output", readTree(t, dir), wantTree(entries))

	// A partial whose bytes are not the blob's is discarded, not kept.
	os.Remove(filepath.Join(dir, "big"))
	if err := os.MkdirAll(staging, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(partial, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := c.DownloadOutput(ctx, b, kilnsdk.OutputTarget{Path: dir}); err == nil || !strings.Contains(err.Error(), "discarded") {
		t.Fatalf("download over a corrupt partial: %v, want an error saying it was discarded", err)
	}
	if _, err := os.Stat(partial); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the corrupt partial is still there: %v", err)
	}
	if _, err := c.DownloadOutput(ctx, b, kilnsdk.OutputTarget{Path: dir}); err != nil {
		t.Fatalf("download after the corrupt partial went: %v", err)
	}
	diffTrees(t, "local output after a corrupt partial", readTree(t, dir), wantTree(entries))

	// A symlink already in the directory does not lead a write outside it.
	outside := t.TempDir()
	dir2 := filepath.Join(t.TempDir(), "out")
	if err := os.MkdirAll(dir2, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(dir2, "data")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.DownloadOutput(ctx, b, kilnsdk.OutputTarget{Path: dir2}); err != nil {
		t.Fatal(err)
	}
	if names, _ := os.ReadDir(outside); len(names) != 0 {
		t.Errorf("the download wrote %v outside its directory", names)
	}
	diffTrees(t, "local output over a symlink", readTree(t, dir2), wantTree(entries))

	// A manifest naming a path outside the output is refused whole.
	evil := f.build(t, succeededWith(f.put(t, "local", []outEntry{{path: "../evil", content: "x", mode: 0o644}})))
	parent := t.TempDir()
	if _, err := c.DownloadOutput(ctx, evil, kilnsdk.OutputTarget{Path: filepath.Join(parent, "out")}); err == nil || !strings.Contains(err.Error(), "escapes") {
		t.Errorf("a manifest with ../evil: %v, want refused", err)
	}
	if _, err := os.Stat(filepath.Join(parent, "evil")); err == nil {
		t.Error("../evil was written")
	}

	// The same files as a tar: through the SDK to a file, and kiln output
	// to a file and to stdout.
	tarFile := filepath.Join(t.TempDir(), "fs.tar")
	if _, err := c.DownloadOutput(ctx, b, kilnsdk.OutputTarget{Path: tarFile, Type: "tar"}); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(tarFile)
	if err != nil {
		t.Fatal(err)
	}
	diffTrees(t, "tar output", readTar(t, data), wantTree(entries))
	if _, err := os.Stat(tarFile + ".kiln-download"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the tar's staging directory is left: %v", err)
	}
	r := kiln(t, f.addr, "output", b.Id, "-o", "-")
	if r.code != 0 {
		t.Fatalf("kiln output -o -: %s", r)
	}
	diffTrees(t, "kiln output -o -", readTar(t, []byte(r.stdout)), wantTree(entries))
	dir3 := filepath.Join(t.TempDir(), "out")
	r = kiln(t, f.addr, "output", b.Id, "--progress", "plain", "--output", "type=local,dest="+dir3)
	if r.code != 0 || !strings.Contains(r.stderr, "exporting output to "+dir3+": 6 files, ") {
		t.Fatalf("kiln output type=local: %s", r)
	}
	diffTrees(t, "kiln output type=local", readTree(t, dir3), wantTree(entries))
}

// TestOutputImageAndPlatforms: an oci or docker output is its one image
// tarball, written to a file (resumed from a partial one) or stdout; a
// multi-platform build's local output has one subdirectory per platform;
// a build without output, another output's type, and an expired output
// are refused with a message.
func TestOutputImageAndPlatforms(t *testing.T) {
	t.Parallel()
	f := startOutputFarm(t)
	c := f.client(t)
	ctx := t.Context()

	image := bytes.Repeat([]byte("layer bytes "), 200_000) // 2.4 MB
	img := f.build(t, succeededWith(f.put(t, "docker", []outEntry{{path: "image.tar", content: string(image), mode: 0o644}})))
	file := filepath.Join(t.TempDir(), "img.tar")
	if err := os.WriteFile(file+".kiln-partial", image[:1000], 0o600); err != nil {
		t.Fatal(err)
	}
	st, err := c.DownloadOutput(ctx, img, kilnsdk.OutputTarget{Path: file})
	if err != nil || st.Resumed != 1 || st.FetchedBytes != int64(len(image)-1000) {
		t.Fatalf("docker output to a file: %+v, %v; want resumed after 1000 bytes", st, err)
	}
	if got, _ := os.ReadFile(file); !bytes.Equal(got, image) {
		t.Error("the docker output file differs from the image tarball")
	}
	r := kiln(t, f.addr, "output", img.Id, "-o", "type=docker,dest=-")
	if r.code != 0 || r.stdout != string(image) {
		t.Fatalf("kiln output type=docker,dest=-: exit %d, %d bytes on stdout, want %d\n%s", r.code, len(r.stdout), len(image), r.stderr)
	}
	if r := kiln(t, f.addr, "output", img.Id, "-o", "type=tar,dest=x.tar"); r.code != 1 || !strings.Contains(r.stderr, "cannot be written as type=tar") {
		t.Errorf("kiln output of a docker output as tar: %s", r)
	}

	// Two platforms: linux_amd64/ and linux_arm64/, each its child's files.
	amd := f.build(t, func(b *kilnv1.Build) {
		succeededWith(f.put(t, "local", []outEntry{{path: "arch", content: "amd64\n", mode: 0o644}}))(b)
		b.Spec.Platforms = []string{"linux/amd64"}
	})
	arm := f.build(t, func(b *kilnv1.Build) {
		succeededWith(f.put(t, "local", []outEntry{{path: "arch", content: "arm64\n", mode: 0o644}}))(b)
		b.Spec.Platforms = []string{"linux/arm64"}
	})
	parent := f.build(t, func(b *kilnv1.Build) {
		b.State = kilnv1.BuildState_BUILD_STATE_SUCCEEDED
		b.Spec.Platforms = []string{"linux/amd64", "linux/arm64"}
		b.Children = []string{amd.Id, arm.Id}
	})
	dir := filepath.Join(t.TempDir(), "out")
	if _, err := c.DownloadOutput(ctx, parent, kilnsdk.OutputTarget{Path: dir}); err != nil {
		t.Fatal(err)
	}
	diffTrees(t, "multi-platform local output", readTree(t, dir), map[string]treeEntry{
		"linux_amd64": {"dir", 0o755, ""}, "linux_amd64/arch": {"file", 0o644, "amd64\n"},
		"linux_arm64": {"dir", 0o755, ""}, "linux_arm64/arch": {"file", 0o644, "arm64\n"},
	})

	none := f.build(t, succeededWith(nil))
	if r := kiln(t, f.addr, "output", none.Id, "-o", "out"); r.code != 1 || !strings.Contains(r.stderr, "has no output") {
		t.Errorf("kiln output of a build without output: %s", r)
	}
	if err := f.conn.JS.DeleteObjectStore(ctx, bus.BucketOutputs); err != nil {
		t.Fatal(err)
	}
	if r := kiln(t, f.addr, "output", img.Id, "-o", "type=docker,dest="+filepath.Join(t.TempDir(), "x.tar")); r.code != 1 || !strings.Contains(r.stderr, "output expired") {
		t.Errorf("kiln output once the output expired: %s", r)
	}
}

// buildkitDockerCLI returns a docker CLI on PATH that builds with BuildKit
// against the test's engine: one with the buildx plugin, or one from
// before buildx was required (Docker 20.10's, which make dev-env installs
// with docker.io).
func buildkitDockerCLI(t *testing.T) string {
	t.Helper()
	var tried []string
	for _, dir := range filepath.SplitList(os.Getenv("PATH")) {
		bin := filepath.Join(dir, "docker")
		if fi, err := os.Stat(bin); err != nil || fi.IsDir() || slices.Contains(tried, bin) {
			continue
		}
		tried = append(tried, bin)
		if exec.Command(bin, "buildx", "version").Run() == nil {
			return bin
		}
		out, err := exec.Command(bin, "version", "--format", "{{.Client.Version}}").Output()
		var major int
		if _, serr := fmt.Sscanf(string(out), "%d.", &major); (err == nil || len(out) > 0) && serr == nil && major < 23 {
			return bin
		}
	}
	t.Fatalf("no docker CLI on PATH builds with BuildKit (tried %v): install the buildx plugin or Debian's docker.io 20.10 (make dev-env)", tried)
	return ""
}

var queuedRE = regexp.MustCompile(`build (\S+) queued`)

// TestOutputMatchesDockerBuild: on the farm's engine, kiln build --output
// type=local and type=tar give the same files (names, types, modes,
// contents, symlink targets) as docker build -o with BuildKit; kiln
// output downloads the local output again, fetching only what is
// missing; type=docker and type=oci are an image tarball of their shape.
func TestOutputMatchesDockerBuild(t *testing.T) {
	t.Parallel()
	docker := buildkitDockerCLI(t)
	k := sharedKilnd(t)
	base := enginetest.BusyboxBase(t)
	ctxDir := writeContext(t, map[string]string{
		"Dockerfile": "FROM " + base + " AS b\n" +
			"RUN mkdir -p /out/sub /out/private && echo hi > /out/sub/f && chmod 4755 /out/sub/f && ln -s sub/f /out/l && " +
			"ln -s /etc/passwd /out/abs && ln /out/sub/f /out/h && touch /out/empty && echo p > /out/private/p && chmod 700 /out/private && chmod 0600 /out/private/p && " +
			"chown -R 1000:1000 /out/private && chown -h 7:8 /out/l\n" +
			"FROM scratch\nCOPY --from=b /out/ /\nCOPY ctx.txt /from-context/\n",
		"ctx.txt": "from the context\n",
	})
	tmp := t.TempDir()
	dockerBuild := func(output string) {
		t.Helper()
		cmd := exec.Command(docker, "build", "-o", output, ctxDir)
		cmd.Env = append(os.Environ(), "DOCKER_BUILDKIT=1")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("docker build -o %s: %v\n%s", output, err, out)
		}
	}
	kilnBuild := func(output string) string {
		t.Helper()
		r := kiln(t, k.addrs.GRPC, "build", "--progress", "plain", "-o", output, ctxDir)
		if r.code != 0 {
			t.Fatalf("kiln build -o %s: %s", output, r)
		}
		m := queuedRE.FindStringSubmatch(r.stderr)
		if m == nil || !strings.Contains(r.stderr, "exporting output to ") {
			t.Fatalf("kiln build -o %s printed no build id or export line: %s", output, r)
		}
		return m[1]
	}

	refDir, kilnDir := filepath.Join(tmp, "docker-local"), filepath.Join(tmp, "kiln-local")
	dockerBuild("type=local,dest=" + refDir)
	id := kilnBuild("type=local,dest=" + kilnDir)
	want := readTree(t, refDir)
	for p, e := range map[string]treeEntry{
		"sub/f": {"file", 0o755 | fs.ModeSetuid, "hi\n"}, "l": {"symlink", 0, "sub/f"}, "abs": {"symlink", 0, "/etc/passwd"},
		"private": {"dir", 0o700, ""}, "private/p": {"file", 0o600, "p\n"}, "from-context/ctx.txt": {"file", 0o644, "from the context\n"},
	} {
		if want[p] != e {
			t.Errorf("docker build -o type=local: %s is %v, want %v", p, want[p], e)
		}
	}
	diffTrees(t, "kiln --output type=local against docker's", readTree(t, kilnDir), want)

	refTar, kilnTar := filepath.Join(tmp, "docker.tar"), filepath.Join(tmp, "kiln.tar")
	dockerBuild("type=tar,dest=" + refTar)
	kilnBuild("type=tar,dest=" + kilnTar)
	refData, err := os.ReadFile(refTar)
	if err != nil {
		t.Fatal(err)
	}
	kilnData, err := os.ReadFile(kilnTar)
	if err != nil {
		t.Fatal(err)
	}
	diffTrees(t, "kiln --output type=tar against docker's", readTar(t, kilnData), readTar(t, refData))
	if got, want := tarOwners(t, kilnData), tarOwners(t, refData); got != want {
		t.Errorf("kiln --output type=tar's owners:\n%s\nwant docker's:\n%s", got, want)
	}

	// Downloaded again after losing a file: only that file is fetched.
	if err := os.Remove(filepath.Join(kilnDir, "from-context", "ctx.txt")); err != nil {
		t.Fatal(err)
	}
	r := kiln(t, k.addrs.GRPC, "output", id, "--progress", "plain", "-o", "type=local,dest="+kilnDir)
	if r.code != 0 || !strings.Contains(r.stderr, fmt.Sprintf("(%d fetched", len("from the context\n"))) || !strings.Contains(r.stderr, "already in place") {
		t.Fatalf("kiln output after losing one file: %s", r)
	}
	diffTrees(t, "kiln output again", readTree(t, kilnDir), want)

	// Image tarballs: docker's has manifest.json, oci's an oci-layout.
	for typ, marker := range map[string]string{"docker": "manifest.json", "oci": "oci-layout"} {
		file := filepath.Join(tmp, typ+".tar")
		kilnBuild("type=" + typ + ",dest=" + file)
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := readTar(t, data)[marker]; !ok {
			t.Errorf("kiln --output type=%s: the tarball has no %s", typ, marker)
		}
	}
	// What the README shows for --load: the docker tarball loads.
	load := exec.Command(docker, "load", "-i", filepath.Join(tmp, "docker.tar"))
	if out, err := load.CombinedOutput(); err != nil || !strings.Contains(string(out), "Loaded image") {
		t.Errorf("docker load of kiln's type=docker output: %v\n%s", err, out)
	}
}

// tarOwners lists a tar's entries' owners, one "name uid:gid" a line.
func tarOwners(t *testing.T, data []byte) string {
	t.Helper()
	var lines []string
	tr := tar.NewReader(bytes.NewReader(data))
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("reading the tar: %v", err)
		}
		lines = append(lines, fmt.Sprintf("%s %d:%d", strings.TrimSuffix(strings.TrimPrefix(hdr.Name, "./"), "/"), hdr.Uid, hdr.Gid))
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}
