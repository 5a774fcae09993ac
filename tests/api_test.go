package tests

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/kilnbuild/kiln/agent/enginetest"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

// tarContext makes an uncompressed tar of files.
func tarContext(t testing.TB, files map[string]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for name, body := range files {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func digestOf(b []byte) *kilnv1.Digest {
	sum := sha256.Sum256(b)
	return &kilnv1.Digest{Hash: "sha256:" + hex.EncodeToString(sum[:]), SizeBytes: int64(len(b))}
}

// upload sends blob as one chunk and returns its context reference.
func upload(t testing.TB, cs kilnv1.ContextServiceClient, blob []byte, d *kilnv1.Digest) (*kilnv1.ContextRef, error) {
	t.Helper()
	stream, err := cs.UploadBlobs(context.Background())
	if err != nil {
		return nil, err
	}
	if err := stream.Send(&kilnv1.UploadBlobsRequest{Digest: d, Data: blob, FinishWrite: true}); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	if _, err := stream.CloseAndRecv(); err != nil {
		return nil, err
	}
	return &kilnv1.ContextRef{Digest: d, Format: kilnv1.ContextFormat_CONTEXT_FORMAT_TAR}, nil
}

func countBuilds(t testing.TB, bs kilnv1.BuildServiceClient) int {
	t.Helper()
	resp, err := bs.ListBuilds(context.Background(), &kilnv1.ListBuildsRequest{PageSize: 1000})
	if err != nil {
		t.Fatal(err)
	}
	return len(resp.Builds)
}

func TestBadInputIsRefusedAndNothingQueued(t *testing.T) {
	k := sharedKilnd(t)
	bs, cs := k.client(t)
	base := enginetest.BusyboxBase(t)
	good := writeContext(t, map[string]string{"Dockerfile": "FROM " + base + "\n"})
	noDockerfile := writeContext(t, map[string]string{"main.go": "package main\n"})
	deadAddr := func() string {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		return ln.Addr().String()
	}()
	before := countBuilds(t, bs)

	t.Run("cli", func(t *testing.T) {
		tests := []struct {
			name    string
			gateway string
			args    []string
			code    int
			message string
		}{
			{name: "missing Dockerfile", args: []string{"build", noDockerfile}, code: 2, message: "Dockerfile"},
			{name: "missing -f file", args: []string{"build", "-f", "nope/Dockerfile", good}, code: 2, message: "nope/Dockerfile"},
			{name: "invalid tag", args: []string{"build", "-t", "UPPER/Case:bad tag", good}, code: 2, message: "UPPER/Case:bad tag"},
			{name: "unknown progress", args: []string{"build", "--progress", "fancy", good}, code: 2, message: "fancy"},
			{name: "push without tag", args: []string{"build", "--push", good}, code: 2, message: "tag"},
			{name: "unreachable gateway", gateway: deadAddr, args: []string{"build", good}, code: 3, message: deadAddr},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				gw := k.addrs.GRPC
				if tc.gateway != "" {
					gw = tc.gateway
				}
				r := kiln(t, gw, tc.args...)
				if r.code != tc.code {
					t.Fatalf("want exit %d: %s", tc.code, r)
				}
				mustContain(t, r.stderr, tc.message, "stderr")
			})
		}
	})

	t.Run("api", func(t *testing.T) {
		withDockerfile := tarContext(t, map[string]string{"Dockerfile": "FROM " + base + "\n"})
		okRef, err := upload(t, cs, withDockerfile, digestOf(withDockerfile))
		if err != nil {
			t.Fatal(err)
		}
		without := tarContext(t, map[string]string{"main.go": "package main\n"})
		noDfRef, err := upload(t, cs, without, digestOf(without))
		if err != nil {
			t.Fatal(err)
		}
		notUploaded := digestOf([]byte("never uploaded " + uniq()))
		tests := []struct {
			name    string
			req     *kilnv1.StartBuildRequest
			code    codes.Code
			message string
		}{
			{"no spec", &kilnv1.StartBuildRequest{Context: okRef}, codes.InvalidArgument, "spec"},
			{"invalid tag", &kilnv1.StartBuildRequest{Spec: &kilnv1.BuildSpec{Tags: []string{"UPPER/Case:bad tag"}}, Context: okRef}, codes.InvalidArgument, `"UPPER/Case:bad tag"`},
			{"dockerfile escapes", &kilnv1.StartBuildRequest{Spec: &kilnv1.BuildSpec{Dockerfile: "../../etc/passwd"}, Context: okRef}, codes.InvalidArgument, "escapes the build context"},
			{"dockerfile not in context", &kilnv1.StartBuildRequest{Spec: &kilnv1.BuildSpec{}, Context: noDfRef}, codes.InvalidArgument, `Dockerfile "Dockerfile" not found`},
			{"context not uploaded", &kilnv1.StartBuildRequest{Spec: &kilnv1.BuildSpec{}, Context: &kilnv1.ContextRef{Digest: notUploaded, Format: kilnv1.ContextFormat_CONTEXT_FORMAT_TAR}}, codes.FailedPrecondition, "has not been uploaded"},
			{"bad digest", &kilnv1.StartBuildRequest{Spec: &kilnv1.BuildSpec{}, Context: &kilnv1.ContextRef{Digest: &kilnv1.Digest{Hash: "md5:abc"}, Format: kilnv1.ContextFormat_CONTEXT_FORMAT_TAR}}, codes.InvalidArgument, "md5:abc"},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				_, err := bs.StartBuild(context.Background(), tc.req)
				st, _ := status.FromError(err)
				if st.Code() != tc.code || !strings.Contains(st.Message(), tc.message) {
					t.Fatalf("StartBuild = %v; want %s containing %q", err, tc.code, tc.message)
				}
			})
		}
		t.Run("blob digest mismatch stores nothing", func(t *testing.T) {
			blob := []byte("some bytes " + uniq())
			lie := digestOf([]byte("other bytes " + uniq()))
			lie.SizeBytes = int64(len(blob))
			_, err := upload(t, cs, blob, lie)
			if status.Code(err) != codes.InvalidArgument {
				t.Fatalf("upload with a wrong digest = %v, want InvalidArgument", err)
			}
			missing, err := cs.FindMissingBlobs(context.Background(), &kilnv1.FindMissingBlobsRequest{Digests: []*kilnv1.Digest{lie}})
			if err != nil {
				t.Fatal(err)
			}
			if len(missing.Missing) != 1 {
				t.Fatal("a blob that failed verification was stored")
			}
		})
	})

	if after := countBuilds(t, bs); after != before {
		t.Fatalf("bad input queued builds: %d before, %d after", before, after)
	}
}

// watchAll collects a build's events from from on, until the stream ends.
func watchAll(t testing.TB, bs kilnv1.BuildServiceClient, id string, from uint64) []*kilnv1.BuildEvent {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	stream, err := bs.WatchBuild(ctx, &kilnv1.WatchBuildRequest{BuildId: id, FromSequence: from})
	if err != nil {
		t.Fatal(err)
	}
	var out []*kilnv1.BuildEvent
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("watch %s: %v", id, err)
		}
		out = append(out, resp.Event)
	}
}

func TestLateWatcherReplaysWholeLog(t *testing.T) {
	k := sharedKilnd(t)
	bs, _ := k.client(t)
	base := enginetest.BusyboxBase(t)
	dir := writeContext(t, map[string]string{
		"Dockerfile": "FROM " + base + "\nRUN for i in 1 2 3 4 5; do echo line-$i-" + uniq() + "; done\n",
	})
	// The CLI's json progress is the live view of every event.
	r := kiln(t, k.addrs.GRPC, "build", "--no-cache", "--progress", "json", dir)
	if r.code != 0 {
		t.Fatalf("build: %s", r)
	}
	var live []*kilnv1.BuildEvent
	for _, line := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		ev := &kilnv1.BuildEvent{}
		if err := protojson.Unmarshal([]byte(line), ev); err != nil {
			t.Fatalf("json progress line %q: %v", line, err)
		}
		live = append(live, ev)
	}
	if len(live) == 0 || live[len(live)-1].GetFinished() == nil {
		t.Fatalf("live events do not end with finished: %s", r)
	}
	id := live[0].BuildId

	replay := watchAll(t, bs, id, 0)
	if len(replay) != len(live) {
		t.Fatalf("replay has %d events, the live watch had %d", len(replay), len(live))
	}
	for i := range replay {
		if replay[i].Sequence != uint64(i+1) {
			t.Fatalf("event %d has sequence %d", i, replay[i].Sequence)
		}
		if !proto.Equal(replay[i], live[i]) {
			t.Fatalf("event %d differs:\nlive   %v\nreplay %v", i, live[i], replay[i])
		}
	}
	// The gateway's QUEUED event is stored before the scheduler can see the
	// build, so the log's states start QUEUED, ASSIGNED.
	var states []kilnv1.BuildState
	for _, ev := range replay {
		if st := ev.GetState(); st != nil {
			states = append(states, st.State)
		}
	}
	if len(states) < 2 || states[0] != kilnv1.BuildState_BUILD_STATE_QUEUED || states[1] != kilnv1.BuildState_BUILD_STATE_ASSIGNED {
		t.Fatalf("the log's states are %v, want QUEUED, ASSIGNED, …", states)
	}
	var logs int
	for _, ev := range replay {
		if strings.HasPrefix(ev.GetLog().GetText(), "line-") {
			logs++
		}
	}
	if logs != 5 {
		t.Fatalf("replay holds %d of the 5 output lines", logs)
	}
	// Resuming from a sequence returns exactly the rest.
	from := uint64(len(replay)/2 + 1)
	rest := watchAll(t, bs, id, from)
	if len(rest) != len(replay)-int(from)+1 || !proto.Equal(rest[0], replay[from-1]) {
		t.Fatalf("resume from %d gave %d events starting %v", from, len(rest), rest[0])
	}
}

func TestKilndRestartKeepsBuildsAndDrains(t *testing.T) {
	base := enginetest.BusyboxBase(t)
	dataDir := t.TempDir()
	k, err := startKilnd(dataDir, "--drain-timeout", "1s")
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			k.stop()
		}
	}()
	bs, cs := k.client(t)

	// A finished build.
	dir := writeContext(t, map[string]string{"Dockerfile": "FROM " + base + "\nRUN echo done-" + uniq() + "\n"})
	meta := filepath.Join(t.TempDir(), "meta.json")
	if r := kiln(t, k.addrs.GRPC, "build", "--metadata-file", meta, dir); r.code != 0 {
		t.Fatalf("build: %s", r)
	}
	doneID := str(metadata(t, meta), "kiln.build.id")
	before, err := bs.GetBuild(context.Background(), &kilnv1.GetBuildRequest{BuildId: doneID})
	if err != nil {
		t.Fatal(err)
	}

	// A build in flight when kilnd is told to stop.
	blob := tarContext(t, map[string]string{"Dockerfile": "FROM " + base + "\nRUN echo slow-" + uniq() + " && sleep 6\n"})
	ref, err := upload(t, cs, blob, digestOf(blob))
	if err != nil {
		t.Fatal(err)
	}
	started, err := bs.StartBuild(context.Background(), &kilnv1.StartBuildRequest{Spec: &kilnv1.BuildSpec{}, Context: ref})
	if err != nil {
		t.Fatal(err)
	}
	slowID := started.Build.Id
	waitFor(t, 2*time.Minute, "the slow build to run", func() bool {
		b, err := bs.GetBuild(context.Background(), &kilnv1.GetBuildRequest{BuildId: slowID})
		return err == nil && b.Build.State == kilnv1.BuildState_BUILD_STATE_RUNNING
	})
	if err := k.signalAndWait(syscall.SIGTERM, time.Minute); err != nil {
		t.Fatalf("kilnd did not stop cleanly on SIGTERM: %v\n%s", err, k.logs)
	}
	stopped = true

	k2, err := startKilnd(dataDir, "--drain-timeout", "1s")
	if err != nil {
		t.Fatal(err)
	}
	defer k2.stop()
	bs2, _ := k2.client(t)
	after, err := bs2.GetBuild(context.Background(), &kilnv1.GetBuildRequest{BuildId: doneID})
	if err != nil {
		t.Fatalf("GetBuild after restart: %v", err)
	}
	if !proto.Equal(before.Build, after.Build) {
		t.Fatalf("record changed across restart:\nbefore %v\nafter  %v", before.Build, after.Build)
	}
	// The drained build was handed back and finishes after the restart.
	events := watchAll(t, bs2, slowID, 0)
	fin := events[len(events)-1].GetFinished()
	if fin == nil || fin.State != kilnv1.BuildState_BUILD_STATE_SUCCEEDED {
		t.Fatalf("handed-back build ended %v", events[len(events)-1])
	}
	b, err := bs2.GetBuild(context.Background(), &kilnv1.GetBuildRequest{BuildId: slowID})
	if err != nil {
		t.Fatal(err)
	}
	if b.Build.Attempt != 2 {
		t.Fatalf("handed-back build finished at attempt %d, want 2", b.Build.Attempt)
	}
	_ = os.Remove(filepath.Join(dataDir, "ready.json"))
}
