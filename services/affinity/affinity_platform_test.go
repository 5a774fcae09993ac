package affinity

import (
	"testing"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

// A build for one platform has its own lineage and chain, so its cache is
// routed apart from the other platforms'; a build naming none keeps its.
func TestComputePlatformLineage(t *testing.T) {
	df := []byte("FROM busybox\nRUN true\n")
	none := Compute("t", &kilnv1.BuildSpec{Repository: "r"}, df)
	amd := Compute("t", &kilnv1.BuildSpec{Repository: "r", Platforms: []string{"linux/amd64"}}, df)
	arm := Compute("t", &kilnv1.BuildSpec{Repository: "r", Platforms: []string{"linux/arm64"}}, df)
	if none.Lineage != Lineage("t", "r", "", "") {
		t.Fatalf("a build without platform changed lineage: %s", none.Lineage)
	}
	if amd.Lineage == arm.Lineage || amd.Lineage == none.Lineage {
		t.Fatalf("platform lineages not apart: none %s amd64 %s arm64 %s", none.Lineage, amd.Lineage, arm.Lineage)
	}
	if amd.Chain[1] == arm.Chain[1] {
		t.Fatalf("platform chains equal: %s", amd.Chain[1])
	}
}
