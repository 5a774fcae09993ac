// Package ctxmanifest names the build-context rules of
// proto/rules/buildctx for the farm's callers (gateway, agent): the rules,
// limits and encoding of a context manifest live there, once, and the SDK
// packs contexts by the same rules. Its errors are plain (rules.ErrInvalid,
// rules.ErrOverLimit); the gateway maps them to gRPC codes at its edge.
package ctxmanifest

import (
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules/buildctx"
)

// Limits bound one context (buildctx.Limits).
type Limits = buildctx.Limits

// DefaultLimits apply until limits are configured (buildctx.DefaultLimits).
var DefaultLimits = buildctx.DefaultLimits

// MaxManifestBytes bounds an encoded manifest (buildctx.MaxManifestBytes).
const MaxManifestBytes = buildctx.MaxManifestBytes

// Validate checks every entry of m and returns the total size of its files
// (buildctx.Validate).
func Validate(m *kilnv1.ContextManifest, l Limits) (int64, error) { return buildctx.Validate(m, l) }

// Marshal encodes m deterministically (buildctx.Marshal).
func Marshal(m *kilnv1.ContextManifest) ([]byte, error) { return buildctx.Marshal(m) }

// Unmarshal decodes a manifest blob (buildctx.Unmarshal).
func Unmarshal(data []byte) (*kilnv1.ContextManifest, error) { return buildctx.Unmarshal(data) }

// Find returns the entry at p, or nil (buildctx.Find).
func Find(m *kilnv1.ContextManifest, p string) *kilnv1.ContextEntry { return buildctx.Find(m, p) }
