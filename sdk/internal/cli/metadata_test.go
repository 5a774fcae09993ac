package cli

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

func TestMetadataFile(t *testing.T) {
	pushed := &kilnv1.Build{
		Id:    "b01",
		Agent: "kilnd",
		Spec:  &kilnv1.BuildSpec{Tags: []string{"127.0.0.1:5000/x:1", "127.0.0.1:5000/x:latest"}, Push: true},
		State: kilnv1.BuildState_BUILD_STATE_SUCCEEDED,
		Result: &kilnv1.BuildResult{ImageId: "sha256:cfg", Steps: 5, CachedSteps: 3, Descriptor_: &kilnv1.ImageDescriptor{
			MediaType: "application/vnd.oci.image.manifest.v1+json", Digest: "sha256:man", Size: 528,
		}, Pushed: []*kilnv1.PushedImage{
			{Tag: "127.0.0.1:5000/x:1", Digest: "sha256:man", Size: 528},
			{Tag: "127.0.0.1:5000/x:latest", Digest: "sha256:man", Size: 528},
		}},
	}
	local := &kilnv1.Build{Id: "b02", Agent: "a2", Result: &kilnv1.BuildResult{ImageId: "sha256:cfg2", Steps: 1}}
	tests := []struct {
		name  string
		build *kilnv1.Build
		tags  []string
		want  map[string]any
	}{
		{
			name:  "pushed",
			build: pushed,
			want: map[string]any{
				"kiln.build.id":         "b01",
				"kiln.agent":            "kilnd",
				"buildx.build.ref":      "kiln/kilnd/b01",
				"image.name":            "127.0.0.1:5000/x:1,127.0.0.1:5000/x:latest",
				"containerimage.digest": "sha256:man",
				"containerimage.descriptor": map[string]any{
					"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:man", "size": 528.0,
				},
				"containerimage.config.digest": "sha256:cfg",
				"kiln.cache.steps":             5.0,
				"kiln.cache.cached":            3.0,
				"kiln.pushed": []any{
					map[string]any{"tag": "127.0.0.1:5000/x:1", "digest": "sha256:man", "size": 528.0},
					map[string]any{"tag": "127.0.0.1:5000/x:latest", "digest": "sha256:man", "size": 528.0},
				},
			},
		},
		{
			name:  "not pushed, tags from the command line",
			build: local,
			tags:  []string{"app:dev"},
			want: map[string]any{
				"kiln.build.id":                "b02",
				"kiln.agent":                   "a2",
				"buildx.build.ref":             "kiln/a2/b02",
				"image.name":                   "app:dev",
				"containerimage.digest":        "sha256:cfg2",
				"containerimage.config.digest": "sha256:cfg2",
				"kiln.cache.steps":             1.0,
				"kiln.cache.cached":            0.0,
			},
		},
		{
			name: "builder and context transfer",
			build: &kilnv1.Build{Id: "b03", Agent: "a3", Result: &kilnv1.BuildResult{
				ImageId: "sha256:cfg3", Builder: kilnv1.Builder_BUILDER_BUILDKIT, ContextTransferBytes: 4096,
			}},
			want: map[string]any{
				"kiln.build.id":                "b03",
				"kiln.agent":                   "a3",
				"buildx.build.ref":             "kiln/a3/b03",
				"kiln.builder":                 "buildkit",
				"kiln.context.transferBytes":   4096.0,
				"containerimage.digest":        "sha256:cfg3",
				"containerimage.config.digest": "sha256:cfg3",
				"kiln.cache.steps":             0.0,
				"kiln.cache.cached":            0.0,
			},
		},
		{
			name: "classic builder that sent nothing",
			build: &kilnv1.Build{Id: "b04", Agent: "a4", Result: &kilnv1.BuildResult{
				ImageId: "sha256:cfg4", Builder: kilnv1.Builder_BUILDER_CLASSIC,
			}},
			want: map[string]any{
				"kiln.build.id":                "b04",
				"kiln.agent":                   "a4",
				"buildx.build.ref":             "kiln/a4/b04",
				"kiln.builder":                 "classic",
				"kiln.context.transferBytes":   0.0,
				"containerimage.digest":        "sha256:cfg4",
				"containerimage.config.digest": "sha256:cfg4",
				"kiln.cache.steps":             0.0,
				"kiln.cache.cached":            0.0,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "md.json")
			if err := writeMetadataFile(path, tt.build, tt.tags); err != nil {
				t.Fatal(err)
			}
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			var got map[string]any
			if err := json.Unmarshal(data, &got); err != nil {
				t.Fatalf("metadata is not JSON: %v\n%s", err, data)
			}
			gotJSON, _ := json.Marshal(got)
			wantJSON, _ := json.Marshal(tt.want)
			if string(gotJSON) != string(wantJSON) {
				t.Fatalf("metadata\n got %s\nwant %s", gotJSON, wantJSON)
			}

			iid := filepath.Join(t.TempDir(), "iid")
			if err := writeIIDFile(iid, tt.build); err != nil {
				t.Fatal(err)
			}
			if b, _ := os.ReadFile(iid); string(b) != tt.build.GetResult().GetImageId() {
				t.Fatalf("iidfile holds %q", b)
			}
		})
	}
}
