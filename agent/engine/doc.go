// Package engine is the agent's narrow view of a build engine — a Docker
// engine or a standalone buildkitd: ping it,
// build an image, push a tag. Docker implements it over the Engine API
// (github.com/docker/docker/client) with API-version negotiation.
//
// A build takes one of two paths. BuildKit (BuildKit, the default where
// the engine has it; Builders tells) works as the docker CLI does with
// DOCKER_BUILDKIT=1: a session that the engine dials back through
// POST /session serves the context directory and the Dockerfile by file
// sync (only files whose stat changed since the engine's copy under the
// session's shared key cross), the secrets and registry credentials;
// POST /build with version=2 names the session, and its progress arrives
// as "moby.buildkit.trace" messages:
//
//	ContextDir ◄── file sync ── engine ◄── POST /build v2 (session, build id)
//	                                            │ moby.buildkit.trace
//	              StatusResponse ──► traceParser ──► events ──► Reporter
//
// The classic builder (Build) streams a context tar with POST /build
// version=1; its response is a stream of JSON messages that streamParser
// turns into the same events:
//
//	contextTar ──► POST /build ──► JSON messages ──► streamParser ──► events
//
// Either way the Reporter hears Log / StepStarted / StepFinished, and the
// build ends with a Result{ImageID, Steps, CachedSteps} or a *BuildError.
// Cancelling a build's context stops it on the engine: BuildKit builds are
// cancelled with POST /build/cancel; a classic build's request is closed,
// and Build waits until the step's container is gone.
//
// BuildKitd drives a standalone buildkitd (rootful or rootless) the same
// way with BuildKit's own client: Control.Solve with the Dockerfile
// frontend, the same session and the same trace parser, pushing in the
// build (FeaturePushInBuild) and exporting cache to registries
// (FeatureCacheExportRegistry). kinds.go names the engine kinds and
// features the agent advertises and routing matches.
package engine
