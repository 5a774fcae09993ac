package tenants

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/kilnbuild/kiln/proto/rules/cacheopt"
)

// File is a tenants file:
//
//	tenants:
//	  - name: team-a
//	    tokens: ["$argon2id$v=19$m=19456,t=2,p=1$…$…"]
//	    push: ["registry.example.com/team-a/*"]
//	    max_concurrent: 4
//	    weight: 2
//	    cache_registry: registry.example.com/team-a-cache
//	  - name: ops
//	    admin: true
//	    tokens: ["$2b$12$…"]
//
// Unknown fields are errors, so a misspelt limit is not silently ignored.
type File struct {
	Tenants []Tenant `yaml:"tenants"`
}

// maxFileBytes bounds a tenants file.
const maxFileBytes = 16 << 20

// nameRE is the syntax of a tenant name: it appears in metrics, logs, cache
// mount namespaces and KV keys, so it stays plain.
var nameRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$`)

// ValidName reports whether name is a valid tenant name: 1 to 63 lower-case
// letters, digits, '-' and '_', starting and ending with a letter or digit.
func ValidName(name string) bool { return nameRE.MatchString(name) }

// Parse decodes and validates a tenants file. Errors name the line.
func Parse(data []byte) (*Set, error) {
	f, lines, err := decode(data)
	if err != nil {
		return nil, err
	}
	return newSet(f, lines)
}

// Load reads and parses the tenants file at path.
func Load(path string) (*Set, error) {
	fh, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("tenants file: %w", err)
	}
	defer fh.Close()
	data, err := io.ReadAll(io.LimitReader(fh, maxFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("tenants file %s: %w", path, err)
	}
	if len(data) > maxFileBytes {
		return nil, fmt.Errorf("tenants file %s: over %d bytes", path, maxFileBytes)
	}
	s, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("tenants file %s: %w", path, err)
	}
	return s, nil
}

// decode decodes data strictly and returns the line of each tenant.
func decode(data []byte) (File, []int, error) {
	var f File
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil {
		if errors.Is(err, io.EOF) {
			return File{}, nil, errors.New("empty: it must list tenants (tenants: [...])")
		}
		return File{}, nil, fmt.Errorf("%s", strings.TrimPrefix(err.Error(), "yaml: "))
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return File{}, nil, fmt.Errorf("line %d: a tenants file holds one YAML document", extra.Line)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return File{}, nil, fmt.Errorf("%s", strings.TrimPrefix(err.Error(), "yaml: "))
	}
	lines := make([]int, len(f.Tenants))
	if seq := tenantsNode(&doc); seq != nil {
		for i, n := range seq.Content {
			if i < len(lines) {
				lines[i] = n.Line
			}
		}
	}
	return f, lines, nil
}

// tenantsNode returns the sequence under the document's "tenants" key.
func tenantsNode(doc *yaml.Node) *yaml.Node {
	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 {
		return nil
	}
	if seq := valueOf(doc.Content[0], "tenants"); seq != nil && seq.Kind == yaml.SequenceNode {
		return seq
	}
	return nil
}

// validate checks one tenant and parses its token hashes.
func validate(t *Tenant) ([]tokenHash, error) {
	if !ValidName(t.Name) {
		return nil, fmt.Errorf("tenant name %q: use 1 to 63 lower-case letters, digits, '-' and '_', starting and ending with a letter or digit", t.Name)
	}
	if len(t.TokenHashes) == 0 {
		return nil, fmt.Errorf("tenant %q has no tokens: add one with `kilnd tenants add %s`", t.Name, t.Name)
	}
	hashes := make([]tokenHash, 0, len(t.TokenHashes))
	for i, s := range t.TokenHashes {
		h, err := ParseHash(s)
		if err != nil {
			return nil, fmt.Errorf("tenant %q token %d: %w", t.Name, i+1, err)
		}
		hashes = append(hashes, h)
	}
	for _, p := range t.PushNamespaces {
		if _, err := parsePattern(p); err != nil {
			return nil, fmt.Errorf("tenant %q: %w", t.Name, err)
		}
	}
	for _, f := range []struct {
		name string
		v    int64
	}{
		{"max_concurrent", int64(t.MaxConcurrent)}, {"weight", int64(t.Weight)},
		{"context_max_bytes", t.ContextMaxBytes}, {"context_max_entries", int64(t.ContextMaxEntries)},
		{"cas_quota_bytes", t.CASQuotaBytes}, {"log_max_bytes", t.LogMaxBytes},
	} {
		if f.v < 0 {
			return nil, fmt.Errorf("tenant %q: %s is negative (%d)", t.Name, f.name, f.v)
		}
	}
	if t.Weight > maxWeight {
		return nil, fmt.Errorf("tenant %q: weight %d is over %d", t.Name, t.Weight, maxWeight)
	}
	if err := cacheopt.ValidPrefix(t.CacheRegistry); err != nil {
		return nil, fmt.Errorf("tenant %q: cache_registry: %w", t.Name, err)
	}
	for _, f := range t.Policy.FrontendAllow {
		if strings.TrimSpace(f) == "" || strings.ContainsAny(f, " \t\r\n") {
			return nil, fmt.Errorf("tenant %q: policy.frontend_allow entry %q is not an image reference", t.Name, f)
		}
	}
	return hashes, nil
}

// maxWeight bounds a tenant's weight.
const maxWeight = 1 << 20
