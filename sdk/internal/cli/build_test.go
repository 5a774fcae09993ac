package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/sdk/internal/farmtest"
)

func TestBuildContextSummary(t *testing.T) {
	t.Setenv("KILN_CACHE_DIR", t.TempDir())
	farm := farmtest.Start(t)
	dir := contextDir(t) // a 13-byte Dockerfile
	if err := os.WriteFile(filepath.Join(dir, "app"), []byte(strings.Repeat("x", 250_000)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "app.copy"), []byte(strings.Repeat("x", 250_000)), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		mode string
		// summary is the context line stderr must hold, "" for none.
		summary string
	}{
		{name: "first build uploads the distinct blobs", mode: "plain",
			summary: "context: 3 files, 0.5 MB, 0.3 MB uploaded (49.9% already on the farm)\n"},
		{name: "second build uploads nothing", mode: "plain",
			summary: "context: 3 files, 0.5 MB, 0.0 MB uploaded (100.0% already on the farm)\n"},
		{name: "tty mode prints the same line", mode: "tty",
			summary: "context: 3 files, 0.5 MB, 0.0 MB uploaded (100.0% already on the farm)\n"},
		{name: "quiet mode prints none", mode: "quiet"},
		{name: "json mode prints none", mode: "json"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			builds := len(farm.Builds())
			code, stdout, stderr := run(t, nil, "build", "--progress", tt.mode, "--gateway", farm.Addr, dir)
			if code != ExitOK {
				t.Fatalf("exit code %d\nstderr: %s", code, stderr)
			}
			if n := len(farm.Builds()); n != builds+1 {
				t.Fatalf("%d builds on the farm after the run, want %d", n, builds+1)
			}
			if tt.summary == "" {
				if strings.Contains(stderr+stdout, "context") {
					t.Errorf("%s mode mentioned the context:\nstdout %q\nstderr %q", tt.mode, stdout, stderr)
				}
				return
			}
			if !strings.Contains(stderr, "\n"+tt.summary) && !strings.HasPrefix(stderr, tt.summary) {
				t.Errorf("stderr\n%s\nwant the line %q", stderr, tt.summary)
			}
			if strings.Contains(stderr, "kiln: context") || strings.Contains(stderr, "uploaded context") {
				t.Errorf("stderr still has the old context lines:\n%s", stderr)
			}
		})
	}
}

// TestBuildSurvivesAGatewayKill runs `kiln build` against two gateways of
// one farm and kills the one its watch is on mid-build: the build goes on
// on the other, and the log shows every line once, in order.
func TestBuildSurvivesAGatewayKill(t *testing.T) {
	t.Setenv("KILN_CACHE_DIR", t.TempDir())
	a := farmtest.Start(t, farmtest.WithHeldBuilds())
	b := farmtest.StartReplica(t, a)
	dir := contextDir(t)
	type result struct {
		code           int
		stdout, stderr string
	}
	done := make(chan result, 1)
	go func() {
		code, stdout, stderr := run(t, nil, "build", "--progress", "plain", "--gateway", a.Addr+","+b.Addr, dir)
		done <- result{code, stdout, stderr}
	}()
	if err := a.Await(t.Context(), func() bool { return len(a.Builds()) == 1 && a.Watching()+b.Watching() == 1 }); err != nil {
		t.Fatal(err)
	}
	id := a.Builds()[0].GetId()
	line := func(i int) string { return fmt.Sprintf("output-%d-of-the-build", i) }
	for i := range 3 {
		a.Log(id, line(i))
	}
	dead := a
	if b.Watching() == 1 {
		dead = b
	}
	dead.Stop()
	for i := 3; i < 6; i++ {
		a.Log(id, line(i))
	}
	a.Finish(id, kilnv1.BuildState_BUILD_STATE_SUCCEEDED)
	r := <-done
	if r.code != ExitOK {
		t.Fatalf("exit code %d\nstderr: %s", r.code, r.stderr)
	}
	if n := len(a.Builds()); n != 1 {
		t.Fatalf("%d builds on the farm, want 1", n)
	}
	at := -1
	for i := range 6 {
		if n := strings.Count(r.stderr, line(i)); n != 1 {
			t.Fatalf("%q printed %d times, want once:\n%s", line(i), n, r.stderr)
		}
		j := strings.Index(r.stderr, line(i))
		if j < at {
			t.Fatalf("%q printed out of order:\n%s", line(i), r.stderr)
		}
		at = j
	}
}
