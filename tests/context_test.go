package tests

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kilnbuild/kiln/agent/enginetest"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/ctxmanifest"
)

// counter reads one counter from kilnd's /metrics.
func (k *kilnd) counter(t testing.TB, name string) float64 {
	t.Helper()
	res, err := http.Get("http://" + k.addrs.HTTP + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	sc := bufio.NewScanner(res.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("metric %s: %v", name, err)
			}
			return f
		}
	}
	t.Fatalf("metric %s not exposed", name)
	return 0
}

const uploaded = "kiln_context_upload_bytes_received_total"

// writeRandomFiles writes n files of size bytes of seeded random data.
func writeRandomFiles(t testing.TB, dir, prefix string, n, size int, seed uint64) {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, seed))
	buf := make([]byte, size)
	for i := range n {
		for j := range buf {
			buf[j] = byte(rng.Uint32())
		}
		p := filepath.Join(dir, fmt.Sprintf("%s%03d.bin", prefix, i))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, buf, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// kilnIsolated runs the CLI with its own stat cache.
func kilnIsolated(t testing.TB, cacheDir, gateway string, args ...string) result {
	t.Helper()
	t.Setenv("KILN_CACHE_DIR", cacheDir)
	return kiln(t, gateway, args...)
}

func TestIncrementalUploadSendsOnlyTheChange(t *testing.T) {
	k := sharedKilnd(t)
	base := enginetest.BusyboxBase(t)
	dir := writeContext(t, map[string]string{
		"Dockerfile": "FROM " + base + "\nCOPY small/ /small/\nRUN cat /small/* | wc -c\n",
		"small/a":    strings.Repeat("x", 1024),
	})
	writeRandomFiles(t, dir, "data/blob-", 200, 1<<20, rand.Uint64()) // 200 MiB
	cache := t.TempDir()

	before := k.counter(t, uploaded)
	if r := kilnIsolated(t, cache, k.addrs.GRPC, "build", "--progress", "plain", dir); r.code != 0 {
		t.Fatalf("first build: %s", r)
	}
	first := k.counter(t, uploaded) - before
	if first < 200<<20 {
		t.Fatalf("first build uploaded %.0f bytes, want the whole 200 MiB context", first)
	}

	// Change one 1 KB file and rebuild.
	if err := os.WriteFile(filepath.Join(dir, "small/a"), []byte(strings.Repeat("y", 1024)), 0o644); err != nil {
		t.Fatal(err)
	}
	before = k.counter(t, uploaded)
	r := kilnIsolated(t, cache, k.addrs.GRPC, "build", "--progress", "plain", dir)
	if r.code != 0 {
		t.Fatalf("second build: %s", r)
	}
	second := k.counter(t, uploaded) - before
	if second > 0.01*first {
		t.Fatalf("second build uploaded %.0f bytes, over 1%% of the first (%.0f)", second, first)
	}
	if second < 1024 {
		t.Fatalf("second build uploaded %.0f bytes, less than the changed file", second)
	}
	mustContain(t, r.stderr, "already on the farm", "plain progress summary")
}

func TestSharedBlobsAreUploadedOnce(t *testing.T) {
	k := sharedKilnd(t)
	base := enginetest.BusyboxBase(t)
	seed := rand.Uint64()
	mk := func(unique string) string {
		dir := writeContext(t, map[string]string{
			"Dockerfile": "FROM " + base + "\nCOPY unique.txt /u\n",
			"unique.txt": unique,
		})
		writeRandomFiles(t, dir, "shared/f-", 20, 256<<10, seed) // the same 5 MiB in both
		return dir
	}
	a, b := mk("context a "+uniq()), mk("context b "+uniq())
	cache := t.TempDir()
	if r := kilnIsolated(t, cache, k.addrs.GRPC, "build", a); r.code != 0 {
		t.Fatalf("build a: %s", r)
	}
	before := k.counter(t, uploaded)
	if r := kilnIsolated(t, cache, k.addrs.GRPC, "build", b); r.code != 0 {
		t.Fatalf("build b: %s", r)
	}
	if got := k.counter(t, uploaded) - before; got > 64<<10 {
		t.Fatalf("context b uploaded %.0f bytes; its 5 MiB shared with a should not be sent again", got)
	}
}

// TestDockerignoreMatchesDocker builds one context with kiln and with the
// docker CLI (which applies .dockerignore itself) and compares the file
// sets the two images received.
func TestDockerignoreMatchesDocker(t *testing.T) {
	k := sharedKilnd(t)
	base := enginetest.BusyboxBase(t)
	files := map[string]string{
		"Dockerfile":           "FROM " + base + "\nCOPY . /ctx\nCMD [\"find\", \"/ctx\"]\n",
		".dockerignore":        "# Docker's documented examples\n**/*.go\n!keep/*.go\n*/temp*\n*/*/temp*\ntemp?\n*.md\n!README*.md\nREADME-secret.md\nDockerfile\n",
		"main.go":              "package main",
		"pkg/x/y.go":           "package y",
		"keep/kept.go":         "package keep",
		"keep/deep/dropped.go": "package deep",
		"somedir/tempfile":     "t",
		"somedir/sub/temp.txt": "t",
		"tempa":                "t",
		"tempab":               "kept: two characters after temp",
		"README.md":            "kept by the exception",
		"README-secret.md":     "dropped after the exception",
		"CHANGES.md":           "dropped",
		"src/app.txt":          "kept",
	}
	dir := writeContext(t, files)
	tag := "kiln-e2e/ignore:" + uniq()

	r := kiln(t, k.addrs.GRPC, "build", "-t", tag+"-kiln", dir)
	if r.code != 0 {
		t.Fatalf("kiln build: %s", r)
	}
	docker := "docker"
	if _, err := os.Stat("/usr/bin/docker"); err == nil {
		docker = "/usr/bin/docker"
	}
	cmd := exec.Command(docker, "build", "-q", "-t", tag+"-docker", dir)
	cmd.Env = append(os.Environ(), "DOCKER_BUILDKIT=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("docker build: %v\n%s", err, out)
	}
	kilnSet, _ := runImage(t, tag+"-kiln")
	dockerSet, _ := runImage(t, tag+"-docker")
	if kilnSet != dockerSet {
		t.Fatalf("file sets differ\nkiln:\n%s\ndocker:\n%s", kilnSet, dockerSet)
	}
	for _, want := range []string{"/ctx/keep/kept.go", "/ctx/tempab", "/ctx/README.md", "/ctx/src/app.txt", "/ctx/.dockerignore"} {
		mustContain(t, kilnSet, want+"\n", "image file set")
	}
	// The Dockerfile is sent although it is ignored (the build needs it);
	// the engine then drops it from what COPY sees, for docker and kiln alike.
	for _, gone := range []string{"main.go", "y.go", "dropped.go", "tempfile", "temp.txt", "/ctx/tempa\n", "README-secret.md", "CHANGES.md", "/ctx/Dockerfile\n"} {
		if strings.Contains(kilnSet, gone) {
			t.Fatalf("%q should have been ignored:\n%s", gone, kilnSet)
		}
	}
}

func digestHex(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

func TestUnsafeManifestsAreRefusedOverGRPC(t *testing.T) {
	k := sharedKilnd(t)
	bs, cs := k.client(t)
	before := countBuilds(t, bs)
	someFile := func(p string, size int64) *kilnv1.ContextEntry {
		return &kilnv1.ContextEntry{Path: p, Type: kilnv1.EntryType_ENTRY_TYPE_FILE, Mode: 0o644, Size: size,
			Digest: &kilnv1.Digest{Hash: digestHex([]byte(p)), SizeBytes: size}}
	}
	df := someFile("Dockerfile", 10)
	many := &kilnv1.ContextManifest{}
	for i := range 100_001 {
		many.Entries = append(many.Entries, someFile(fmt.Sprintf("f%06d", i), 1))
	}
	tests := []struct {
		name    string
		entries []*kilnv1.ContextEntry
		m       *kilnv1.ContextManifest
		code    codes.Code
		message string
	}{
		{name: "dot-dot", entries: []*kilnv1.ContextEntry{df, someFile("../../etc/passwd", 1)}, code: codes.InvalidArgument, message: `context entry "../../etc/passwd" escapes the build context`},
		{name: "absolute", entries: []*kilnv1.ContextEntry{someFile("/etc/passwd", 1), df}, code: codes.InvalidArgument, message: `"/etc/passwd" is an absolute path`},
		{name: "NUL byte", entries: []*kilnv1.ContextEntry{df, someFile("a\x00b", 1)}, code: codes.InvalidArgument, message: "NUL byte"},
		{name: "duplicate", entries: []*kilnv1.ContextEntry{df, someFile("x", 1), someFile("x", 1)}, code: codes.InvalidArgument, message: `"x" appears twice`},
		{name: "device file", entries: []*kilnv1.ContextEntry{df, {Path: "sda", Type: kilnv1.EntryType_ENTRY_TYPE_FILE, Mode: 0o60660, Digest: &kilnv1.Digest{Hash: digestHex(nil)}}}, code: codes.InvalidArgument, message: `"sda" has mode 060660: device files`},
		{name: "hard link outside", entries: []*kilnv1.ContextEntry{df, {Path: "shadow", Type: kilnv1.EntryType_ENTRY_TYPE_HARDLINK, Mode: 0o644, LinkTarget: "../../etc/shadow"}}, code: codes.InvalidArgument, message: `"shadow" is a hard link to "../../etc/shadow", outside the build context`},
		{name: "file under a symlink", entries: []*kilnv1.ContextEntry{df, {Path: "etc", Type: kilnv1.EntryType_ENTRY_TYPE_SYMLINK, Mode: 0o777, LinkTarget: "/etc"}, someFile("etc/cron.d/x", 1)}, code: codes.InvalidArgument, message: `inside "etc", which is not a directory`},
		{name: "total size", entries: []*kilnv1.ContextEntry{df, someFile("huge", 3<<30)}, code: codes.ResourceExhausted, message: "over 2147483648 bytes (the total size limit)"},
		{name: "path length", entries: []*kilnv1.ContextEntry{df, someFile(strings.Repeat("p", 5000), 1)}, code: codes.ResourceExhausted, message: "path of 5000 bytes is over the limit of 4096 bytes"},
		{name: "entry count", m: many, code: codes.ResourceExhausted, message: "100001 entries, over the limit of 100000 entries"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := tc.m
			if m == nil {
				m = &kilnv1.ContextManifest{Entries: tc.entries}
			}
			_, err := cs.PutManifest(context.Background(), &kilnv1.PutManifestRequest{Manifest: m})
			st, _ := status.FromError(err)
			if st.Code() != tc.code || !strings.Contains(st.Message(), tc.message) {
				t.Fatalf("PutManifest = %v; want %s containing %q", err, tc.code, tc.message)
			}
			data, err := ctxmanifest.Marshal(m)
			if err != nil {
				t.Fatal(err)
			}
			d := &kilnv1.Digest{Hash: digestHex(data), SizeBytes: int64(len(data))}
			missing, err := cs.FindMissingBlobs(context.Background(), &kilnv1.FindMissingBlobsRequest{Digests: []*kilnv1.Digest{d}})
			if err != nil {
				t.Fatal(err)
			}
			if len(missing.Missing) != 1 {
				t.Fatal("a refused manifest was stored")
			}
			// And a build naming it is refused too.
			_, err = bs.StartBuild(context.Background(), &kilnv1.StartBuildRequest{Spec: &kilnv1.BuildSpec{},
				Context: &kilnv1.ContextRef{Digest: d, Format: kilnv1.ContextFormat_CONTEXT_FORMAT_MANIFEST}})
			if status.Code(err) != codes.FailedPrecondition {
				t.Fatalf("StartBuild with the refused manifest = %v, want FailedPrecondition", err)
			}
		})
	}
	t.Run("blob over the size limit", func(t *testing.T) {
		_, err := upload(t, cs, []byte("x"), &kilnv1.Digest{Hash: digestHex([]byte("x")), SizeBytes: 3 << 30})
		if st, _ := status.FromError(err); st.Code() != codes.ResourceExhausted || !strings.Contains(st.Message(), "over the limit of 2147483648 bytes") {
			t.Fatalf("upload of a 3 GiB blob = %v, want ResourceExhausted", err)
		}
	})
	t.Run("manifest whose blobs were never uploaded", func(t *testing.T) {
		m := &kilnv1.ContextManifest{Entries: []*kilnv1.ContextEntry{someFile("Dockerfile", 7)}}
		resp, err := cs.PutManifest(context.Background(), &kilnv1.PutManifestRequest{Manifest: m})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Missing) != 1 {
			t.Fatalf("missing = %v, want the Dockerfile's blob", resp.Missing)
		}
		_, err = bs.StartBuild(context.Background(), &kilnv1.StartBuildRequest{Spec: &kilnv1.BuildSpec{},
			Context: &kilnv1.ContextRef{Digest: resp.Digest, Format: kilnv1.ContextFormat_CONTEXT_FORMAT_MANIFEST}})
		if st, _ := status.FromError(err); st.Code() != codes.FailedPrecondition || !strings.Contains(st.Message(), "have not been uploaded") {
			t.Fatalf("StartBuild = %v, want FailedPrecondition naming the missing blobs", err)
		}
	})
	if after := countBuilds(t, bs); after != before {
		t.Fatalf("refused manifests queued builds: %d before, %d after", before, after)
	}
}

// The gateway remembers contexts it found complete, never ones it refused:
// a build refused for a missing blob starts once the blob is uploaded, and
// a context checked for one Dockerfile is still checked for another.
func TestContextCheckRemembersOnlySuccess(t *testing.T) {
	k := sharedKilnd(t)
	bs, cs := k.client(t)
	ctx := t.Context()
	dockerfile := fmt.Appendf(nil, "FROM scratch\nCOPY a /a\n# %s\n", t.Name())
	a := fmt.Appendf(nil, "file a of %s\n", t.Name())
	entry := func(p string, data []byte) *kilnv1.ContextEntry {
		return &kilnv1.ContextEntry{Path: p, Type: kilnv1.EntryType_ENTRY_TYPE_FILE, Mode: 0o644, Size: int64(len(data)),
			Digest: &kilnv1.Digest{Hash: digestHex(data), SizeBytes: int64(len(data))}}
	}
	m := &kilnv1.ContextManifest{Entries: []*kilnv1.ContextEntry{entry("Dockerfile", dockerfile), entry("a", a)}}
	resp, err := cs.PutManifest(ctx, &kilnv1.PutManifestRequest{Manifest: m})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := upload(t, cs, dockerfile, m.Entries[0].Digest); err != nil {
		t.Fatal(err)
	}
	start := func(df string) (*kilnv1.StartBuildResponse, error) {
		return bs.StartBuild(ctx, &kilnv1.StartBuildRequest{Spec: &kilnv1.BuildSpec{Dockerfile: df},
			Context: &kilnv1.ContextRef{Digest: resp.Digest, Format: kilnv1.ContextFormat_CONTEXT_FORMAT_MANIFEST}})
	}
	for range 2 { // refused every time while "a" is missing
		if _, err := start("Dockerfile"); status.Code(err) != codes.FailedPrecondition {
			t.Fatalf("StartBuild without blob a = %v, want FailedPrecondition", err)
		}
	}
	if _, err := upload(t, cs, a, m.Entries[1].Digest); err != nil {
		t.Fatal(err)
	}
	started, err := start("Dockerfile")
	if err != nil {
		t.Fatalf("StartBuild once the context is complete = %v", err)
	}
	t.Cleanup(func() {
		_, _ = bs.CancelBuild(context.WithoutCancel(ctx), &kilnv1.CancelBuildRequest{BuildId: started.Build.Id})
	})
	if _, err := start("Dockerfile.other"); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), `"Dockerfile.other" not found`) {
		t.Fatalf("StartBuild naming a Dockerfile the context lacks = %v, want InvalidArgument", err)
	}
}
