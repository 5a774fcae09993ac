// Package bus holds what every kiln service needs to talk over NATS: the
// names of streams, key-value buckets and subjects, the embedded server, the
// connection and JetStream set-up, and the protobuf codec.
package bus

import (
	"fmt"
	"strings"
)

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
	// LeaderKeyScheduler is the key of the scheduler leader's lease in
	// KILN_LEADER.
	LeaderKeyScheduler = "scheduler"
	// BucketAgents holds agent heartbeats; entries expire with a TTL.
	BucketAgents = "KILN_AGENTS"
	// BucketCAS is the object store of build-context blobs.
	BucketCAS = "KILN_CAS"
	// BucketOutputs is the object store of builds' exported outputs
	// (--output local|tar|oci|docker): blobs named "sha256/<hex>" and the
	// ContextManifest listing them, written by the agent that built them,
	// read by the gateway's ReadOutput (which checks each digest), kept
	// until the bucket's TTL.
	BucketOutputs = "KILN_OUTPUTS"
	// BucketSealNonces remembers the seal nonces (BuildSpec.seal_nonce) the
	// gateway accepted, by sha256 of tenant and nonce, so that no two
	// builds of a tenant share one: sealed values copied from one build's
	// record into another build are refused. Keys are create-only and
	// expire after SealNonceTTL.
	BucketSealNonces = "KILN_SEAL_NONCES"

	// subjectPullPrefix prefixes kiln.sched.pull.<agent name>, the agents'
	// long-poll request subject for work.
	subjectPullPrefix = "kiln.sched.pull."
	// subjectWithdrawPrefix prefixes kiln.sched.withdraw.<agent name>: a
	// WorkOffer with no free slots, the agent takes back every pull it has
	// waiting (it is draining).
	subjectWithdrawPrefix = "kiln.sched.withdraw."
	// subjectReportPrefix prefixes kiln.agent.report.<agent name>, the
	// subject of an agent's AgentReports to the schedulers.
	subjectReportPrefix = "kiln.agent.report."
	// agentInboxPrefix prefixes the inbox of each agent's connection, so an
	// agent's credential may subscribe to its own replies and no others.
	agentInboxPrefix = "_INBOX_AGENT."
	// subjectCancelPrefix prefixes kiln.cancel.<build id>.
	subjectCancelPrefix = "kiln.cancel."
	// subjectDrainPrefix prefixes kiln.agent.drain.<agent name>: the
	// gateway's request that an agent stop (or resume) taking new builds,
	// answered by the agent with its record.
	subjectDrainPrefix = "kiln.agent.drain."
)

// The agent name comes last in an agent's subjects so a name with dots (a
// host name) is still one subject suffix: the schedulers subscribe to
// prefix.> and take the rest as the name, and an agent's credential allows
// exactly its own.

// PullSubject is the subject of an agent's WorkOffers.
func PullSubject(agent string) string { return subjectPullPrefix + agent }

// WithdrawSubject is the subject of an agent's withdrawals.
func WithdrawSubject(agent string) string { return subjectWithdrawPrefix + agent }

// ReportSubject is the subject of an agent's AgentReports.
func ReportSubject(agent string) string { return subjectReportPrefix + agent }

// DrainSubject is the subject of drain requests to an agent.
func DrainSubject(agent string) string { return subjectDrainPrefix + agent }

// AgentInboxPrefix is the inbox prefix of an agent's connection
// (nats.CustomInboxPrefix).
func AgentInboxPrefix(agent string) string { return agentInboxPrefix + agent }

// AgentFromSubject returns the agent name an agent subject ends with.
func AgentFromSubject(subject string) (string, bool) {
	for _, p := range []string{subjectPullPrefix, subjectWithdrawPrefix, subjectReportPrefix} {
		if name, ok := strings.CutPrefix(subject, p); ok {
			return name, ValidAgentName(name)
		}
	}
	return "", false
}

// CheckAgentName is ValidAgentName as an error that names the rule, for
// callers that refuse a bad name.
func CheckAgentName(name string) error {
	if !ValidAgentName(name) {
		return fmt.Errorf("agent name %q: want letters, digits, '-', '_' and dots between them", name)
	}
	return nil
}

// ValidAgentName reports whether name can name an agent: a KV key (its
// heartbeat in KILN_AGENTS), a subject suffix and a file name — letters,
// digits, '-' and '_', with dots between non-empty parts. At most 128 bytes.
func ValidAgentName(name string) bool {
	if name == "" || len(name) > 128 || name[0] == '.' || name[len(name)-1] == '.' || strings.Contains(name, "..") {
		return false
	}
	for _, c := range name {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.ContainsRune("-_.", c):
		default:
			return false
		}
	}
	return true
}

// EventsSubject is the subject of one build's events.
func EventsSubject(buildID string) string { return subjectEventsPrefix + buildID }

// CancelSubject is the subject on which a build's cancellation fans out.
func CancelSubject(buildID string) string { return subjectCancelPrefix + buildID }

// BuildIDFromEventsSubject returns the build id of an events subject.
func BuildIDFromEventsSubject(subject string) (string, bool) {
	return strings.CutPrefix(subject, subjectEventsPrefix)
}
