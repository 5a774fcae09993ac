package tenants

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"

	"go.yaml.in/yaml/v3"
)

// AddRequest is one `kilnd tenants add`: a new tenant, or a new token for an
// existing one (rotation).
type AddRequest struct {
	Name  string
	Admin bool
	Push  []string
}

// AddToken makes a new token for tenant req.Name in the tenants file at
// path, creating the tenant (and the file) if needed, and returns the
// token: the only time it exists in clear. An existing tenant keeps its
// tokens, gains req.Push patterns it lacks, and becomes admin if
// req.Admin. The file keeps its comments, is checked as a whole before it
// is written, and is replaced atomically with mode 0600.
func AddToken(path string, req AddRequest) (token string, created bool, err error) {
	if !ValidName(req.Name) {
		return "", false, fmt.Errorf("tenant name %q: use 1 to 63 lower-case letters, digits, '-' and '_', starting and ending with a letter or digit", req.Name)
	}
	for _, p := range req.Push {
		if _, err := parsePattern(p); err != nil {
			return "", false, err
		}
	}
	data, err := os.ReadFile(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", false, fmt.Errorf("read tenants file: %w", err)
	}
	var doc yaml.Node
	if len(data) > 0 {
		if _, _, err := decode(data); err != nil {
			return "", false, fmt.Errorf("tenants file %s: %w", path, err)
		}
		if err := yaml.Unmarshal(data, &doc); err != nil {
			return "", false, fmt.Errorf("tenants file %s: %w", path, err)
		}
	}
	if doc.Kind == 0 {
		doc = yaml.Node{Kind: yaml.DocumentNode, Content: []*yaml.Node{{Kind: yaml.MappingNode, Tag: "!!map"}}}
	}
	seq := tenantsNode(&doc)
	if seq == nil {
		root := doc.Content[0]
		seq = &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq"}
		root.Content = append(root.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: "tenants"}, seq)
	}
	if token, err = NewToken(); err != nil {
		return "", false, err
	}
	hash, err := HashToken(token)
	if err != nil {
		return "", false, err
	}
	tn := findTenant(seq, req.Name)
	if tn == nil {
		created = true
		t := Tenant{Name: req.Name, TokenHashes: []string{hash}, Admin: req.Admin, PushNamespaces: req.Push}
		tn = &yaml.Node{}
		if err := tn.Encode(t); err != nil {
			return "", false, fmt.Errorf("encode tenant: %w", err)
		}
		seq.Content = append(seq.Content, tn)
	} else {
		appendTo(tn, "tokens", hash)
		for _, p := range req.Push {
			appendTo(tn, "push", p)
		}
		if req.Admin {
			setScalar(tn, "admin", "true", "!!bool")
		}
	}
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(&doc); err != nil {
		return "", false, fmt.Errorf("encode tenants file: %w", err)
	}
	if err := enc.Close(); err != nil {
		return "", false, fmt.Errorf("encode tenants file: %w", err)
	}
	out := buf.Bytes()
	if _, err := Parse(out); err != nil {
		return "", false, fmt.Errorf("tenants file %s after the change: %w", path, err)
	}
	if err := writeAtomic(path, out); err != nil {
		return "", false, err
	}
	return token, created, nil
}

// findTenant returns the mapping of the tenant called name in seq, or nil.
func findTenant(seq *yaml.Node, name string) *yaml.Node {
	for _, n := range seq.Content {
		if v := valueOf(n, "name"); v != nil && v.Value == name {
			return n
		}
	}
	return nil
}

func valueOf(m *yaml.Node, key string) *yaml.Node {
	if m.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return m.Content[i+1]
		}
	}
	return nil
}

// appendTo appends value to the sequence under key in m, unless present.
func appendTo(m *yaml.Node, key, value string) {
	seq := valueOf(m, key)
	if seq == nil || seq.Kind != yaml.SequenceNode {
		seq = &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq"}
		setNode(m, key, seq)
	}
	if slices.ContainsFunc(seq.Content, func(n *yaml.Node) bool { return n.Value == value }) {
		return
	}
	seq.Content = append(seq.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: value})
}

func setScalar(m *yaml.Node, key, value, tag string) {
	setNode(m, key, &yaml.Node{Kind: yaml.ScalarNode, Tag: tag, Value: value})
}

func setNode(m *yaml.Node, key string, v *yaml.Node) {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			m.Content[i+1] = v
			return
		}
	}
	m.Content = append(m.Content, &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: key}, v)
}

// writeAtomic replaces path with data, mode 0600: a reader (the gateway on
// SIGHUP) sees the old file or the new one, never half of one.
func writeAtomic(path string, data []byte) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write tenants file: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // after a successful rename there is nothing to remove
	if err := f.Chmod(0o600); err != nil {
		f.Close()
		return fmt.Errorf("write tenants file: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write tenants file: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("write tenants file: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write tenants file: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write tenants file: %w", err)
	}
	return nil
}
