// Package bus holds what every kiln service needs to talk over NATS: the
// names of streams, key-value buckets and subjects, the embedded server, the
// connection and JetStream set-up, and the protobuf codec.
package bus

import "strings"

// Stream, bucket and subject names. DESIGN.md "Wire contracts" is the reference.
const (
	// StreamRequests is the gateway → scheduler intake stream.
	StreamRequests = "KILN_REQUESTS"
	// SubjectRequests carries BuildRequested messages; Nats-Msg-Id is the build id.
	SubjectRequests = "kiln.requests"

	// StreamEvents holds every build's event log, replayable after it ends.
	StreamEvents = "KILN_EVENTS"
	// subjectEventsPrefix prefixes kiln.events.<build id>.
	subjectEventsPrefix = "kiln.events."

	// BucketBuilds is the KV bucket of build records, the source of truth.
	BucketBuilds = "KILN_BUILDS"
	// BucketIdempotency maps idempotency keys to build ids for good.
	BucketIdempotency = "KILN_IDEMPOTENCY"
	// BucketInflight maps a build's identity (tenant, context, spec) to the
	// build in flight with it, so identical requests merge.
	BucketInflight = "KILN_INFLIGHT"
	// BucketLeader holds the scheduler leader's lease.
	BucketLeader = "KILN_LEADER"
	// BucketAgents holds agent heartbeats; entries expire with a TTL.
	BucketAgents = "KILN_AGENTS"
	// BucketCAS is the object store of build-context blobs.
	BucketCAS = "KILN_CAS"

	// SubjectPull is the agents' long-poll request subject for work.
	SubjectPull = "kiln.sched.pull"
	// SubjectWithdraw carries a WorkOffer with no free slots: the agent
	// takes back every pull it has waiting (it is draining).
	SubjectWithdraw = "kiln.sched.withdraw"
	// subjectCancelPrefix prefixes kiln.cancel.<build id>.
	subjectCancelPrefix = "kiln.cancel."
)

// EventsSubject is the subject of one build's events.
func EventsSubject(buildID string) string { return subjectEventsPrefix + buildID }

// CancelSubject is the subject on which a build's cancellation fans out.
func CancelSubject(buildID string) string { return subjectCancelPrefix + buildID }

// BuildIDFromEventsSubject returns the build id of an events subject.
func BuildIDFromEventsSubject(subject string) (string, bool) {
	return strings.CutPrefix(subject, subjectEventsPrefix)
}
