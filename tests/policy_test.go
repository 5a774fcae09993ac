package tests

import (
	"archive/tar"
	"bytes"
	"context"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/kilnbuild/kiln/agent/enginetest"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

// TestSandboxPolicyRefusals: with no policy in its record (the gateway
// stamps none for the local tenant), a build that would pull a frontend
// named by the first word of "# syntax=", fetch from the agent host's
// loopback or a cloud metadata address, or run with host networking is
// refused by the agent before the engine runs any of it, with a message
// naming the policy. The loopback listener sees no request.
func TestSandboxPolicyRefusals(t *testing.T) {
	k := sharedKilnd(t)
	base := enginetest.BusyboxBase(t)

	var hits atomic.Int32
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		hits.Add(1)
		_, _ = w.Write([]byte("loopback secret"))
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })

	for _, tt := range []struct {
		name, dockerfile, want string
		args                   []string
	}{
		{"syntax with extra words", "# syntax=evil/frontend:1 127.0.0.1:5000/kiln/dockerfile:1\nFROM " + base + "\n",
			`# syntax=evil/frontend:1: refused by policy: the engine would pull and run the Dockerfile frontend image "evil/frontend:1"`, nil},
		{"ADD from loopback", "FROM " + base + "\nADD http://" + ln.Addr().String() + "/x /x\n",
			"ADD http://" + ln.Addr().String() + "/x: refused by policy: loopback address", nil},
		{"ADD from the metadata endpoint", "FROM " + base + "\nADD http://169.254.169.254/latest/meta-data/ /m\n",
			"ADD http://169.254.169.254/latest/meta-data/: refused by policy: cloud metadata endpoint", nil},
		{"RUN --network=host", "FROM " + base + "\nRUN --network=host wget -q -O- http://" + ln.Addr().String() + "/\n",
			"RUN --network=host: refused by policy (tenant ", nil},
		{"RUN --security=insecure", "FROM " + base + "\nRUN --security=insecure true\n",
			"RUN --security=insecure: refused by policy (tenant ", nil},
		// The classic builder fetches ADD URLs from the engine's host.
		{"classic builder: ADD from loopback", "FROM " + base + "\nADD http://" + ln.Addr().String() + "/c /c\n",
			"ADD http://" + ln.Addr().String() + "/c: refused by policy: loopback address", []string{"--builder", "classic"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			marker := "ran-" + uniq()
			// A step before the refused one shows whether the engine ran
			// anything: it must not.
			df := strings.Replace(tt.dockerfile, "\nFROM "+base+"\n", "\nFROM "+base+"\nRUN echo "+marker+"\n", 1)
			if !strings.Contains(df, marker) {
				df = "FROM " + base + "\nRUN echo " + marker + "\n" + strings.TrimPrefix(df, "FROM "+base+"\n")
			}
			args := append(append([]string{"build", "--progress", "plain"}, tt.args...), writeContext(t, map[string]string{"Dockerfile": df}))
			r := kiln(t, k.addrs.GRPC, args...)
			if r.code != 1 {
				t.Fatalf("want the build to fail: %s", r)
			}
			mustContain(t, r.stderr, tt.want, "the refusal")
			if strings.Contains(r.stdout+r.stderr, marker) {
				t.Fatalf("the engine ran a step of a refused build:\n%s", r)
			}
		})
	}
	if n := hits.Load(); n != 0 {
		t.Fatalf("the loopback listener got %d requests", n)
	}
}

// TestCacheMountIdIsNamespacedByTheAgent: the engine builds the agent's
// rewritten Dockerfile, whose cache mount id carries the tenant's prefix
// (the step the engine reports names it); the context's Dockerfile is
// built unchanged otherwise.
func TestCacheMountIdIsNamespacedByTheAgent(t *testing.T) {
	k := sharedKilnd(t)
	base := enginetest.BusyboxBase(t)
	n := uniq()
	dir := writeContext(t, map[string]string{"Dockerfile": "FROM " + base + "\n" +
		"RUN --mount=type=cache,id=e2e-ns-" + n + ",target=/c \\\n  echo built-" + n + "\n"})
	r := kiln(t, k.addrs.GRPC, "build", "--progress", "plain", dir)
	if r.code != 0 {
		t.Fatalf("build: %s", r)
	}
	mustContain(t, r.stderr, "id=kiln/", "the step's cache mount id (the tenant's prefix)")
	mustContain(t, r.stderr, "/e2e-ns-"+n, "the step's cache mount id (the Dockerfile's id)")
	mustContain(t, r.stderr, "built-"+n, "the step's output")
}

// TestClassicTarContextIsCheckedInEveryCopy: an API client's tar context
// holding the Dockerfile twice (the engine extracts the last copy) is
// checked in both, so a harmless first copy does not hide an ADD from
// the engine host's loopback in the second; the listener sees nothing.
func TestClassicTarContextIsCheckedInEveryCopy(t *testing.T) {
	k := sharedKilnd(t)
	bs, cs := k.client(t)
	base := enginetest.BusyboxBase(t)
	var hits atomic.Int32
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(http.ResponseWriter, *http.Request) { hits.Add(1) })}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, body := range []string{
		"FROM " + base + "\nRUN echo harmless\n",
		"FROM " + base + "\nADD http://" + ln.Addr().String() + "/x /x\n",
	} {
		if err := tw.WriteHeader(&tar.Header{Name: "./Dockerfile", Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	ref, err := upload(t, cs, buf.Bytes(), digestOf(buf.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	started, err := bs.StartBuild(context.Background(), &kilnv1.StartBuildRequest{Spec: &kilnv1.BuildSpec{Builder: kilnv1.Builder_BUILDER_CLASSIC}, Context: ref})
	if err != nil {
		t.Fatal(err)
	}
	events := watchAll(t, bs, started.Build.Id, 0)
	fin := events[len(events)-1].GetFinished()
	if fin == nil || fin.State != kilnv1.BuildState_BUILD_STATE_FAILED || !strings.Contains(fin.Error, "ADD http://"+ln.Addr().String()+"/x: refused by policy: loopback address") {
		t.Fatalf("the build ended %v, want failed by the policy", events[len(events)-1])
	}
	if n := hits.Load(); n != 0 {
		t.Fatalf("the loopback listener got %d requests", n)
	}
}
