package agent

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/docker/docker/api/types/image"

	"github.com/kilnbuild/kiln/agent/enginetest"
	"github.com/kilnbuild/kiln/agent/localcas"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/agentproto"
	"github.com/kilnbuild/kiln/services/bus"
	"github.com/kilnbuild/kiln/services/bus/bustest"
	"github.com/kilnbuild/kiln/services/cas"
	"github.com/kilnbuild/kiln/services/ctxmanifest"
)

// farmContext builds a context manifest whose file blobs are uploaded to
// the farm's real CAS, as a client's PutManifest and UploadBlobs would.
type farmContext struct {
	t       *testing.T
	blobs   *cas.Store
	entries []*kilnv1.ContextEntry
}

func digestOf(data []byte) *kilnv1.Digest {
	sum := sha256.Sum256(data)
	return &kilnv1.Digest{Hash: "sha256:" + hex.EncodeToString(sum[:]), SizeBytes: int64(len(data))}
}

func (c *farmContext) put(data []byte) *kilnv1.Digest {
	c.t.Helper()
	d := digestOf(data)
	if err := c.blobs.Put(c.t.Context(), d.Hash, d.SizeBytes, bytes.NewReader(data)); err != nil {
		c.t.Fatal(err)
	}
	return d
}

func (c *farmContext) file(p string, mode uint32, mtime int64, content string) {
	d := c.put([]byte(content))
	c.entries = append(c.entries, &kilnv1.ContextEntry{
		Path: p, Type: kilnv1.EntryType_ENTRY_TYPE_FILE, Mode: mode, Size: d.SizeBytes, Digest: d, MtimeUnix: mtime,
	})
}

func (c *farmContext) add(e *kilnv1.ContextEntry) { c.entries = append(c.entries, e) }

// ref sorts the entries, stores the manifest and returns its reference.
func (c *farmContext) ref() *kilnv1.ContextRef {
	c.t.Helper()
	slices.SortFunc(c.entries, func(a, b *kilnv1.ContextEntry) int { return strings.Compare(a.Path, b.Path) })
	data, err := ctxmanifest.Marshal(&kilnv1.ContextManifest{Entries: c.entries})
	if err != nil {
		c.t.Fatal(err)
	}
	return &kilnv1.ContextRef{Digest: c.put(data), Format: kilnv1.ContextFormat_CONTEXT_FORMAT_MANIFEST}
}

// testAgent is an agent on the real engine and a real NATS server, with an
// empty local blob cache, and the schedulers' report handler it reports to.
func testAgent(t *testing.T, conn *bus.Conn) *Agent {
	t.Helper()
	h, err := agentproto.NewHandler(t.Context(), agentproto.HandlerConfig{Conn: conn, Lease: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	hctx, stop := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- h.Serve(hctx) }()
	t.Cleanup(func() { stop(); <-served })
	a, err := New(t.Context(), Config{
		Name: "manifest-test", Engine: enginetest.Docker(t), Conn: conn, CacheDir: t.TempDir(),
		Logger: slog.New(slog.NewTextHandler(t.Output(), nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

// runAssigned records a build as assigned to a, runs it to its end as a
// slot would, and returns its final record and log lines.
func runAssigned(t *testing.T, a *Agent, spec *kilnv1.BuildSpec, ref *kilnv1.ContextRef) (*kilnv1.Build, []string) {
	t.Helper()
	rec, evs := runRecord(t, a, &kilnv1.Build{Spec: spec, Context: ref}, false)
	return rec, logLines(evs)
}

// logLines are the text of evs' log lines.
func logLines(evs []*kilnv1.BuildEvent) []string {
	var lines []string
	for _, ev := range evs {
		if l := ev.GetLog(); l != nil {
			lines = append(lines, l.GetText())
		}
	}
	return lines
}

func TestBuildFromManifestContextColdThenWarm(t *testing.T) {
	conn := bustest.Conn(t)
	base := enginetest.BusyboxBase(t)
	docker := enginetest.APIClient(t)
	a := testAgent(t, conn)
	n := strings.ToLower(rand.Text()[:12])

	c := &farmContext{t: t, blobs: a.blobs}
	c.file("Dockerfile", 0o644, 1_700_000_000, fmt.Sprintf(`FROM %s
COPY . /ctx/
RUN cd /ctx && sh app/run.sh && \
    stat -c '%%n %%a %%h %%Y %%s' app/data.txt app/run.sh app/runlink dup.txt && \
    readlink app/config && \
    test "$(stat -c %%i app/run.sh)" = "$(stat -c %%i app/runlink)" && echo runlink is run.sh && \
    sha256sum big.bin
`, base))
	c.add(&kilnv1.ContextEntry{Path: "app", Type: kilnv1.EntryType_ENTRY_TYPE_DIRECTORY, Mode: 0o750, MtimeUnix: 1_700_000_000})
	c.file("app/data.txt", 0o640, 1_600_000_000, "hello\n")
	c.file("app/run.sh", 0o755, 1_650_000_000, "echo run-"+n+"\n")
	c.add(&kilnv1.ContextEntry{Path: "app/runlink", Type: kilnv1.EntryType_ENTRY_TYPE_HARDLINK, Mode: 0o755, LinkTarget: "app/run.sh", MtimeUnix: 1_650_000_000})
	c.add(&kilnv1.ContextEntry{Path: "app/config", Type: kilnv1.EntryType_ENTRY_TYPE_SYMLINK, Mode: 0o777, LinkTarget: "../../etc/kiln/config", MtimeUnix: 1_650_000_000})
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	c.file("big.bin", 0o644, 1_650_000_000, string(big))
	c.file("dup.txt", 0o644, 1_600_000_001, "hello\n") // the blob of app/data.txt
	ref := c.ref()

	bigSum := sha256.Sum256(big)
	wantOutput := []string{
		"run-" + n,
		"app/data.txt 640 1 1600000000 6",
		fmt.Sprintf("app/run.sh 755 2 1650000000 %d", len("echo run-"+n+"\n")),
		fmt.Sprintf("app/runlink 755 2 1650000000 %d", len("echo run-"+n+"\n")),
		"dup.txt 644 1 1600000001 6",
		"../../etc/kiln/config",
		"runlink is run.sh",
		hex.EncodeToString(bigSum[:]) + "  big.bin",
	}
	// 5 files in 4 blobs: the Dockerfile, hello, run.sh, big.bin.
	var dockerfileSize int64
	for _, e := range c.entries {
		if e.Path == "Dockerfile" {
			dockerfileSize = e.Size
		}
	}
	total := dockerfileSize + 6 + int64(len("echo run-"+n+"\n")) + int64(len(big)) + 6
	fetchedCold := total - 6 // hello once
	wantCold := fmt.Sprintf("kiln: context: 5 files, %.1f MB; fetched 4 blobs (%.1f MB) from the farm, 0 already on this agent", float64(total)/1e6, float64(fetchedCold)/1e6)
	wantWarm := fmt.Sprintf("kiln: context: 5 files, %.1f MB; fetched 0 blobs (0.0 MB) from the farm, 4 already on this agent", float64(total)/1e6)

	spec := &kilnv1.BuildSpec{Tags: []string{"kiln-test/agent-manifest:" + n}, NoCache: true}
	var images []string
	t.Cleanup(func() {
		for _, id := range images {
			_, err := docker.ImageRemove(context.Background(), id, image.RemoveOptions{Force: true, PruneChildren: true})
			if err != nil && !cerrdefs.IsNotFound(err) {
				t.Errorf("removing image %s: %v", id, err)
			}
		}
	})
	for _, run := range []struct {
		name        string
		contextLine string
	}{
		{"cold: every blob fetched", wantCold},
		{"warm: every blob local", wantWarm},
	} {
		rec, lines := runAssigned(t, a, spec, ref)
		if rec.Result.GetImageId() != "" {
			images = append(images, rec.Result.ImageId)
		}
		if rec.State != kilnv1.BuildState_BUILD_STATE_SUCCEEDED {
			t.Fatalf("%s: build %s: %s\nlog:\n%s", run.name, rec.State, rec.Error, strings.Join(lines, "\n"))
		}
		// BuildKit mode goes on to say what it wrote to the work directory.
		if !slices.ContainsFunc(lines, func(l string) bool { return strings.HasPrefix(l, run.contextLine) }) {
			t.Fatalf("%s: log lacks %q:\n%s", run.name, run.contextLine, strings.Join(lines, "\n"))
		}
		for _, want := range wantOutput {
			if !slices.Contains(lines, want) {
				t.Fatalf("%s: the image's /ctx is wrong: log lacks %q:\n%s", run.name, want, strings.Join(lines, "\n"))
			}
		}
		inspect, err := docker.ImageInspect(t.Context(), spec.Tags[0])
		if err != nil {
			t.Fatal(err)
		}
		if inspect.ID != rec.Result.ImageId {
			t.Fatalf("%s: %s is image %s, the build recorded %s", run.name, spec.Tags[0], inspect.ID, rec.Result.ImageId)
		}
	}
	if blobs, _ := a.cache.Usage(); blobs != 5 {
		t.Fatalf("local cache holds %d blobs, want the manifest and its 4 file blobs", blobs)
	}
}

func TestManifestContextThatCannotBeBuiltFailsTheBuild(t *testing.T) {
	conn := bustest.Conn(t)
	a := testAgent(t, conn)
	farm, err := conn.JS.ObjectStore(t.Context(), bus.BucketCAS)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		ref  func(c *farmContext) *kilnv1.ContextRef
		want string
	}{
		{"an entry escapes the context", func(c *farmContext) *kilnv1.ContextRef {
			c.file("../../etc/cron.d/x", 0o644, 0, "* * * * * root sh -c evil\n")
			c.file("Dockerfile", 0o644, 0, "FROM scratch\n")
			return c.ref()
		}, `context entry "../../etc/cron.d/x" escapes the build context`},
		{"a file blob was never uploaded", func(c *farmContext) *kilnv1.ContextRef {
			d := digestOf([]byte("never uploaded"))
			c.add(&kilnv1.ContextEntry{Path: "Dockerfile", Type: kilnv1.EntryType_ENTRY_TYPE_FILE, Mode: 0o644, Size: d.SizeBytes, Digest: d})
			return c.ref()
		}, "fetch build context files: fetch blob " + digestOf([]byte("never uploaded")).Hash},
		{"the farm's copy of a file blob is corrupt", func(c *farmContext) *kilnv1.ContextRef {
			// Content no one has stored through cas.Store: a Store that has
			// verified a blob's bytes serves them from memory.
			d := digestOf([]byte("FROM scratch\n# the farm's copy is corrupt\n"))
			if _, err := farm.PutString(t.Context(), d.Hash, "FROM evil\n"); err != nil {
				t.Fatal(err)
			}
			c.add(&kilnv1.ContextEntry{Path: "Dockerfile", Type: kilnv1.EntryType_ENTRY_TYPE_FILE, Mode: 0o644, Size: d.SizeBytes, Digest: d})
			return c.ref()
		}, cas.ErrDigestMismatch.Error()},
		{"the manifest blob does not decode", func(c *farmContext) *kilnv1.ContextRef {
			return &kilnv1.ContextRef{Digest: c.put([]byte("not a manifest")), Format: kilnv1.ContextFormat_CONTEXT_FORMAT_MANIFEST}
		}, "context manifest does not decode"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ref := tc.ref(&farmContext{t: t, blobs: a.blobs})
			rec, lines := runAssigned(t, a, &kilnv1.BuildSpec{}, ref)
			if rec.State != kilnv1.BuildState_BUILD_STATE_FAILED || !strings.Contains(rec.Error, tc.want) {
				t.Fatalf("build %s: %q, want FAILED with %q\nlog:\n%s", rec.State, rec.Error, tc.want, strings.Join(lines, "\n"))
			}
		})
	}
}

func TestLocalBlobCutShortFailsTheBuildPartWay(t *testing.T) {
	conn := bustest.Conn(t)
	a := testAgent(t, conn)
	c := &farmContext{t: t, blobs: a.blobs}
	c.file("Dockerfile", 0o644, 0, "FROM "+enginetest.BusyboxBase(t)+"\n")
	body := bytes.Repeat([]byte("z"), 1<<20)
	c.file("payload", 0o644, 0, string(body))
	ref := c.ref()
	blob := digestOf(body)
	pin, _, err := a.cache.Ensure(t.Context(), []localcas.Blob{{Digest: blob.Hash, Size: blob.SizeBytes}}, a.blobs.Get)
	if err != nil {
		t.Fatal(err)
	}
	pin.Release()
	// The disk loses the end of the blob behind the store's back.
	if err := os.Truncate(filepath.Join(a.cfg.CacheDir, "sha256", strings.TrimPrefix(blob.Hash, "sha256:")), 1000); err != nil {
		t.Fatal(err)
	}
	// The classic builder finds out while streaming the tar, BuildKit mode
	// while writing the work directory.
	for builder, want := range map[kilnv1.Builder]string{
		kilnv1.Builder_BUILDER_CLASSIC:  `write build context: context entry "payload": blob size differs from its context entry: blob ` + blob.Hash + " ended after 1000 of 1048576 bytes",
		kilnv1.Builder_BUILDER_BUILDKIT: `write the build context to the agent's work directory: materialize build context in `,
	} {
		rec, lines := runAssigned(t, a, &kilnv1.BuildSpec{Builder: builder}, ref)
		if rec.State != kilnv1.BuildState_BUILD_STATE_FAILED || !strings.HasPrefix(rec.Error, want) || !strings.Contains(rec.Error, blob.Hash) {
			t.Fatalf("%s: build %s: %q, want FAILED with %q…\nlog:\n%s", builder, rec.State, rec.Error, want, strings.Join(lines, "\n"))
		}
	}
}
