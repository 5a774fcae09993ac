package agent

import (
	"crypto/rand"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kilnbuild/kiln/agent/enginetest"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/bus"
	"github.com/kilnbuild/kiln/services/bus/bustest"
	"github.com/kilnbuild/kiln/services/cas"
)

// TestBuildFromBatchedSmallFiles: a context of 300 one-line files that the
// gateway stored in a batch (cas.PutBatch) is fetched cold by the agent in
// batched reads, every file reaches the image intact, and a blob whose
// stored bytes were altered afterwards fails the build naming its digest
// instead of reaching the engine.
func TestBuildFromBatchedSmallFiles(t *testing.T) {
	conn := bustest.Conn(t)
	base := enginetest.BusyboxBase(t)
	a := testAgent(t, conn)
	n := strings.ToLower(rand.Text()[:12])

	const files = 300
	c := &farmContext{t: t, blobs: a.blobs}
	var items []cas.Item
	for i := range files {
		data := []byte(fmt.Sprintf("line %d %s\n", i, n))
		d := digestOf(data)
		items = append(items, cas.Item{Digest: d.Hash, Data: data})
		c.add(&kilnv1.ContextEntry{Path: fmt.Sprintf("files/f%03d.txt", i), Type: kilnv1.EntryType_ENTRY_TYPE_FILE, Mode: 0o644, Size: d.SizeBytes, Digest: d, MtimeUnix: 1_700_000_000})
	}
	c.add(&kilnv1.ContextEntry{Path: "files", Type: kilnv1.EntryType_ENTRY_TYPE_DIRECTORY, Mode: 0o755, MtimeUnix: 1_700_000_000})
	c.file("Dockerfile", 0o644, 1_700_000_000, "FROM "+base+"\nCOPY files/ /files/\n"+
		`RUN ls /files | wc -l && cat /files/f000.txt /files/f299.txt`+"\n")
	if err := a.blobs.PutBatch(t.Context(), items, cas.Meta{Owner: "team"}); err != nil {
		t.Fatal(err)
	}
	ref := c.ref()

	spec := &kilnv1.BuildSpec{Tags: []string{"kiln-test/agent-batched:" + n}, NoCache: true}
	rec, lines := runAssigned(t, a, spec, ref)
	if rec.State != kilnv1.BuildState_BUILD_STATE_SUCCEEDED {
		t.Fatalf("build %s: %s\nlog:\n%s", rec.State, rec.Error, strings.Join(lines, "\n"))
	}
	wantLine := fmt.Sprintf("kiln: context: %d files", files+1)
	if !slices.ContainsFunc(lines, func(l string) bool {
		return strings.HasPrefix(l, wantLine) && strings.Contains(l, fmt.Sprintf("fetched %d blobs", files+1))
	}) {
		t.Fatalf("log lacks %q with every blob fetched:\n%s", wantLine, strings.Join(lines, "\n"))
	}
	for _, want := range []string{fmt.Sprint(files), "line 0 " + n, "line 299 " + n} {
		if !slices.Contains(lines, want) {
			t.Fatalf("the image's /files is wrong: log lacks %q:\n%s", want, strings.Join(lines, "\n"))
		}
	}

	// Alter one stored blob (its chunk, same size) and build on an agent
	// with an empty cache: the agent checks what it reads.
	victim := items[42]
	altered := nats.NewMsg("$O." + bus.BucketCAS + ".C." + strings.TrimPrefix(victim.Digest, "sha256:"))
	altered.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
	altered.Data = []byte(strings.Repeat("x", len(victim.Data)))
	if _, err := conn.JS.PublishMsg(t.Context(), altered); err != nil {
		t.Fatal(err)
	}
	fresh := testAgent(t, conn)
	rec, lines = runAssigned(t, fresh, spec, ref)
	if rec.State != kilnv1.BuildState_BUILD_STATE_FAILED || !strings.Contains(rec.Error, victim.Digest) {
		t.Fatalf("build from an altered blob: %s %q, want FAILED naming %s\nlog:\n%s", rec.State, rec.Error, victim.Digest, strings.Join(lines, "\n"))
	}
}
