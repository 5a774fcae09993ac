package cli

import (
	"bytes"
	"encoding/json"
	"slices"
	"testing"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

// TestInspectShowsCaches: kiln inspect's JSON holds the build's cache
// options, the caches its engine imported from and the automatic warm
// start's ref.
func TestInspectShowsCaches(t *testing.T) {
	var out bytes.Buffer
	if err := writeRecords(&out, []*kilnv1.Build{{
		Id: "b1",
		Spec: &kilnv1.BuildSpec{
			CacheFrom: []*kilnv1.CacheOption{{Type: "registry", Attrs: map[string]string{"ref": "registry:5000/app:cache"}}},
			CacheTo:   []*kilnv1.CacheOption{{Type: "inline"}},
		},
		Result: &kilnv1.BuildResult{
			CacheImportedFrom: []string{"registry:5000/app:cache", "registry:5000/kiln-cache/t:l"},
			WarmCacheRef:      "registry:5000/kiln-cache/t:l",
		},
	}}); err != nil {
		t.Fatal(err)
	}
	var got []struct {
		Spec struct {
			CacheFrom []struct {
				Type  string            `json:"type"`
				Attrs map[string]string `json:"attrs"`
			} `json:"cacheFrom"`
			CacheTo []struct {
				Type string `json:"type"`
			} `json:"cacheTo"`
		} `json:"spec"`
		Result struct {
			CacheImportedFrom []string `json:"cacheImportedFrom"`
			WarmCacheRef      string   `json:"warmCacheRef"`
		} `json:"result"`
	}
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 {
		t.Fatalf("records: %s", out.String())
	}
	b := got[0]
	if len(b.Spec.CacheFrom) != 1 || b.Spec.CacheFrom[0].Attrs["ref"] != "registry:5000/app:cache" || len(b.Spec.CacheTo) != 1 || b.Spec.CacheTo[0].Type != "inline" ||
		!slices.Equal(b.Result.CacheImportedFrom, []string{"registry:5000/app:cache", "registry:5000/kiln-cache/t:l"}) || b.Result.WarmCacheRef != "registry:5000/kiln-cache/t:l" {
		t.Fatalf("inspect output:\n%s", out.String())
	}
}
