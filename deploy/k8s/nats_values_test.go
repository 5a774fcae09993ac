package k8s

import (
	"os"
	"path"
	"sort"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// chartKeys are the keys of the official NATS chart's values (nats-io/k8s
// helm/charts/nats/values.yaml, chart version 2.14.2) that nats/*.yaml may
// set, each checked against that file. A key ending in "*" holds free-form
// content the chart merges in (NATS configuration, JSON patches, container
// fields), so nothing below it is checked.
var chartKeys = []string{
	"tlsCA.enabled", "tlsCA.secretName", "tlsCA.key",
	"config.cluster.enabled", "config.cluster.replicas",
	"config.cluster.tls.enabled", "config.cluster.tls.secretName",
	"config.jetstream.enabled",
	"config.jetstream.fileStore.enabled", "config.jetstream.fileStore.dir",
	"config.jetstream.fileStore.pvc.enabled", "config.jetstream.fileStore.pvc.size",
	"config.jetstream.fileStore.pvc.storageClassName",
	"config.jetstream.merge*",
	"config.nats.tls.enabled", "config.nats.tls.secretName", "config.nats.tls.merge*",
	"config.monitor.enabled", "config.monitor.port",
	"config.merge*",
	"container.env*", "container.merge*", "container.patch*",
	"podTemplate.patch*", "podTemplate.topologySpreadConstraints*",
	"podDisruptionBudget.enabled",
	"natsBox.enabled",
}

// leaves returns the dotted paths of v's leaves, stopping at free-form keys.
func leaves(prefix string, v any, out *[]string) {
	for _, k := range chartKeys {
		if strings.TrimSuffix(k, "*") == prefix && strings.HasSuffix(k, "*") {
			*out = append(*out, k)
			return
		}
	}
	m, ok := v.(map[string]any)
	if !ok || prefix != "" && len(m) == 0 {
		*out = append(*out, prefix)
		return
	}
	for k, child := range m {
		p := k
		if prefix != "" {
			p = prefix + "." + k
		}
		leaves(p, child, out)
	}
}

// get walks a dotted path of nested maps.
func get(v any, dotted string) any {
	for _, k := range strings.Split(dotted, ".") {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

func loadValues(t *testing.T, file string) map[string]any {
	t.Helper()
	src, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var v map[string]any
	// Strict: a key given twice is an error, not the last one winning.
	if err := yaml.UnmarshalStrict(src, &v); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return v
}

func TestNATSValues(t *testing.T) {
	tests := []struct {
		file string
		want map[string]any // dotted path → value
	}{
		{"nats/values.yaml", map[string]any{
			"config.cluster.enabled":                 true,
			"config.cluster.replicas":                float64(3),
			"config.jetstream.enabled":               true,
			"config.jetstream.fileStore.enabled":     true,
			"config.jetstream.fileStore.pvc.enabled": true,
			"config.jetstream.merge.sync_interval":   "always",
			"config.monitor.enabled":                 true,
			"natsBox.enabled":                        false,
		}},
		{"nats/values-tls.yaml", map[string]any{
			"config.nats.tls.enabled":      true,
			"config.nats.tls.merge.verify": true,
			"config.cluster.tls.enabled":   true,
			"tlsCA.enabled":                true,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			v := loadValues(t, tt.file)
			var got []string
			leaves("", v, &got)
			sort.Strings(got)
			for _, k := range got {
				found := false
				for _, ck := range chartKeys {
					found = found || k == ck
				}
				if !found {
					t.Errorf("%s: %s is not a key of the nats chart's values as this test knows them", tt.file, k)
				}
			}
			for k, want := range tt.want {
				if got := get(v, k); got != want {
					t.Errorf("%s: %s = %v, want %v", tt.file, k, got, want)
				}
			}
		})
	}
}

// TestNATSAuthInclude: the chart includes the auth.conf of kilnd
// nats-creds from where the nats container mounts Secret kiln-nats-auth.
func TestNATSAuthInclude(t *testing.T) {
	v := loadValues(t, "nats/values.yaml")
	var include string
	if m, ok := get(v, "config.merge").(map[string]any); ok {
		for k, val := range m {
			if strings.HasSuffix(k, "$include") {
				include, _ = val.(string)
			}
		}
	}
	if include == "" {
		t.Fatal("config.merge includes no file")
	}
	// nats-server resolves includes against the configuration's directory.
	file := path.Join("/etc/nats-config", include)
	if path.Base(file) != "auth.conf" {
		t.Errorf("include %s: want kilnd nats-creds' auth.conf", file)
	}
	var mount, volume string
	for _, p := range asList(get(v, "container.patch")) {
		if val, ok := p["value"].(map[string]any); ok && p["op"] == "add" && p["path"] == "/volumeMounts/-" {
			if mp, _ := val["mountPath"].(string); mp == path.Dir(file) {
				mount, _ = val["name"].(string)
			}
		}
	}
	for _, p := range asList(get(v, "podTemplate.patch")) {
		if val, ok := p["value"].(map[string]any); ok && p["op"] == "add" && p["path"] == "/spec/volumes/-" && val["name"] == mount {
			volume, _ = get(val, "secret.secretName").(string)
		}
	}
	if mount == "" || volume != "kiln-nats-auth" {
		t.Errorf("%s is not mounted from Secret kiln-nats-auth (volume %q, secret %q)", path.Dir(file), mount, volume)
	}
	// The release name the kiln manifests and the KEDA trigger assume.
	src, err := os.ReadFile("nats/values.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(src), "helm install "+natsRelease+" nats/nats --version 2.14.2") {
		t.Errorf("nats/values.yaml does not say to install release %s of chart 2.14.2", natsRelease)
	}
}

func asList(v any) []map[string]any {
	l, _ := v.([]any)
	var out []map[string]any
	for _, e := range l {
		if m, ok := e.(map[string]any); ok {
			out = append(out, m)
		}
	}
	return out
}
