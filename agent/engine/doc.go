// Package engine is the agent's narrow view of a Docker engine: ping it,
// build an image from a context tar, push a tag. Docker implements it over
// the Engine API (github.com/docker/docker/client) with API-version
// negotiation.
//
// A build is one POST /build with the classic builder; its response is a
// stream of JSON messages that a pure parser turns into step events:
//
//	contextTar ──► POST /build ──► JSON messages ──► streamParser ──► events
//	                                                                    │
//	              Reporter.Log / StepStarted / StepFinished ◄── Build adds timing
//	              Result{ImageID, Steps, CachedSteps} or *BuildError
//
// Cancelling a build's context closes the request; the engine then kills and
// removes the step's container, and Build waits until it is gone.
package engine
