package engine

// Engine kinds, as kiln-agent --engine URLs and Agent.engine_kind name
// them.
const (
	// KindDocker is a Docker engine driven over the Engine API (package
	// engine's Docker).
	KindDocker = "docker"
	// KindBuildKit is a standalone buildkitd driven with BuildKit's own
	// client (Control.Solve with a session, as buildctl and buildx's
	// remote driver do), rootful or rootless.
	KindBuildKit = "buildkit"
)

// Features an engine may have beyond building, advertised in
// Agent.features; routing requires the ones a build needs.
const (
	// FeatureCacheImport: the engine imports cache from a registry ref
	// (--cache-from type=registry). Both kinds.
	FeatureCacheImport = "cache-import"
	// FeatureCacheExportInline: the engine writes cache metadata into the
	// image it builds (--cache-to type=inline). Both kinds.
	FeatureCacheExportInline = "cache-export-inline"
	// FeatureCacheExportRegistry: the engine exports its cache to a
	// registry ref as its own artifact, mode=min or max
	// (--cache-to type=registry). Standalone BuildKit only: Docker's
	// BuildKit with the graph-driver store has no cache exporter.
	FeatureCacheExportRegistry = "cache-export-registry"
	// FeaturePushInBuild: the engine pushes the image as part of the build
	// (BuildKit's image exporter with push=true) and reports the pushed
	// digests in BuildKitResult.Pushed; the agent then does not call Push.
	FeaturePushInBuild = "push-in-build"
	// FeatureRootless: the engine runs without root (rootless buildkitd).
	FeatureRootless = "rootless"
	// FeatureAttestations: the engine attaches provenance and SBOM
	// attestations to the image it pushes (--provenance, --sbom).
	// Standalone BuildKit only.
	FeatureAttestations = "attestations"
	// FeatureNamedContexts: the engine's Dockerfile frontend takes named
	// contexts (--build-context; proto/rules/namedctx.Feature). Standalone
	// BuildKit only: Docker's /build API does not pass them.
	FeatureNamedContexts = "named-contexts"
	// FeatureAnnotations: the engine's image exporter writes OCI
	// annotations (--annotation); FeatureCall: its Dockerfile frontend
	// answers --call check, outline and targets. Standalone BuildKit only
	// (proto/rules/annotations.Feature, proto/rules/attest.FeatureCall).
	FeatureAnnotations, FeatureCall = "annotations", "frontend-requests"
)

// CacheOption is one cache import or export for the engine, parsed and
// checked by proto/rules/cacheopt: Type "registry" or "inline", Attrs as
// buildx names them ("ref", "mode", ...).
type CacheOption struct {
	Type  string
	Attrs map[string]string
}

// Pushed is one tag an engine pushed during a build (FeaturePushInBuild).
type Pushed struct {
	Tag    string
	Digest string // manifest digest, "sha256:…"
	Size   int64  // manifest size in bytes
}
