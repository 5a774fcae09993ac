package telemetry

import "go.opentelemetry.io/otel/attribute"

// Span attribute keys kiln's spans use. Every kiln span about a build
// carries BuildIDKey. The cicd.* keys are OpenTelemetry's CI/CD semantic
// conventions.
const (
	BuildIDKey      = attribute.Key("kiln.build.id")
	AttemptKey      = attribute.Key("kiln.build.attempt")
	TenantKey       = attribute.Key("kiln.tenant")
	AgentKey        = attribute.Key("kiln.agent")
	StepNumberKey   = attribute.Key("kiln.step.number")
	StepCachedKey   = attribute.Key("kiln.step.cached")
	StepInstrKey    = attribute.Key("kiln.step.instruction")
	RouteScoreKey   = attribute.Key("kiln.route.score")
	RouteBestKey    = attribute.Key("kiln.route.best_score")
	RouteSpilledKey = attribute.Key("kiln.route.spilled")
	RouteReasonKey  = attribute.Key("kiln.route.reason")
	TagKey          = attribute.Key("kiln.push.tag")

	CICDComponentKey = attribute.Key("cicd.system.component")
	CICDWorkerIDKey  = attribute.Key("cicd.worker.id")
)

// BuildID is the kiln.build.id attribute.
func BuildID(id string) attribute.KeyValue { return BuildIDKey.String(id) }

// Component is the cicd.system.component attribute: which part of kiln
// (gateway, scheduler, agent) made the span, also when one process (kilnd)
// runs them all.
func Component(name string) attribute.KeyValue { return CICDComponentKey.String(name) }
