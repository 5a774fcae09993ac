package affinity

import (
	"strings"
	"testing"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

func TestInstructions(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want []string
	}{
		{"simple", "FROM a\nRUN echo hi\n", []string{"FROM a", "RUN echo hi"}},
		{"comments and blanks", "# syntax=docker/dockerfile:1\n\n# c\nfrom a\n\n  run   echo    hi  \n", []string{"FROM a", "RUN echo hi"}},
		{"continuation", "FROM a\nRUN apt-get update && \\\n    apt-get install -y x\n", []string{"FROM a", "RUN apt-get update && apt-get install -y x"}},
		{"comment inside continuation", "RUN a \\\n# note\n  b\n", []string{"RUN a b"}},
		{"escape directive", "# escape=`\nFROM a\nRUN dir c:\\ `\n  /s\n", []string{"FROM a", `RUN dir c:\ /s`}},
		{"trailing continuation", "RUN a \\", []string{"RUN a"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := Instructions([]byte(tc.in), 10)
			if strings.Join(got, "|") != strings.Join(tc.want, "|") {
				t.Fatalf("Instructions = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestCompute(t *testing.T) {
	df := []byte("ARG BASE=busybox:1\nFROM ${BASE} AS build\nRUN make\nFROM --platform=linux/amd64 scratch\nCOPY --from=build /out /\n")
	spec := &kilnv1.BuildSpec{Repository: "git.example/app", Dockerfile: "Dockerfile"}
	a := Compute("team", spec, df)
	if len(a.BaseImages) != 1 || a.BaseImages[0] != "busybox:1" {
		t.Fatalf("base images %v, want [busybox:1] (scratch is no image)", a.BaseImages)
	}
	if len(a.Chain) != 5 {
		t.Fatalf("chain of %d, want 5", len(a.Chain))
	}
	// A build arg changes the base and so every link of the chain after it.
	b := Compute("team", &kilnv1.BuildSpec{Repository: "git.example/app", Dockerfile: "Dockerfile", BuildArgs: map[string]string{"BASE": "alpine:3"}}, df)
	if b.BaseImages[0] != "alpine:3" || b.Chain[1] == a.Chain[1] || b.Chain[0] != a.Chain[0] {
		t.Fatalf("build arg not applied: %v / chain %v vs %v", b.BaseImages, b.Chain, a.Chain)
	}
	// Changing a later instruction keeps the shared prefix.
	c := Compute("team", spec, []byte(strings.Replace(string(df), "COPY --from=build /out /", "COPY --from=build /out /app", 1)))
	for i := 0; i < 4; i++ {
		if c.Chain[i] != a.Chain[i] {
			t.Fatalf("chain[%d] changed though instructions 0..%d did not", i, i)
		}
	}
	if c.Chain[4] == a.Chain[4] {
		t.Fatal("chain[4] did not change with instruction 4")
	}
	if a.Lineage != c.Lineage || a.Lineage == Compute("other", spec, df).Lineage || a.Lineage == Compute("team", &kilnv1.BuildSpec{Repository: "git.example/app", Dockerfile: "Dockerfile", Target: "build"}, df).Lineage {
		t.Fatal("lineage must depend on tenant and target, not on the Dockerfile's content")
	}
	if got := Compute("team", spec, nil); len(got.Chain) != 0 || got.Lineage != a.Lineage {
		t.Fatalf("unknown Dockerfile: %v", got)
	}
}

func FuzzCompute(f *testing.F) {
	f.Add([]byte("ARG B=x\nFROM $B\nRUN a \\\n b\n"), "B", "y")
	f.Fuzz(func(t *testing.T, df []byte, k, v string) {
		a := Compute("t", &kilnv1.BuildSpec{BuildArgs: map[string]string{k: v}}, df)
		if len(a.Chain) > maxInstructions {
			t.Fatalf("chain of %d", len(a.Chain))
		}
		for _, h := range a.Chain {
			if len(h) != hashLen {
				t.Fatalf("hash %q", h)
			}
		}
	})
}
