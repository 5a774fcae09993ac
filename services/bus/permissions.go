package bus

import (
	"fmt"
	"slices"
	"strings"

	"github.com/nats-io/nats-server/v2/server"
)

// Role is a kind of NATS client of the farm; each has its own credential
// whose permissions allow only the subjects and streams the role needs.
type Role string

// The farm's roles.
const (
	// RoleGateway serves the gRPC API: it creates build records, stores
	// contexts, queues builds, publishes QUEUED and cancel events and reads
	// every build's event log.
	RoleGateway Role = "gateway"
	// RoleScheduler assigns builds, sweeps leases and handles the agents'
	// reports: the only writer of a build record once it is queued.
	RoleScheduler Role = "scheduler"
	// RoleAgent runs builds. One credential per agent name: it may pull work,
	// report on its builds and write its heartbeat under its own name only,
	// read context blobs, hear cancellations and answer drain requests for
	// its own name, and write the outputs of its builds; it cannot read build
	// records or event logs, nor write either.
	RoleAgent Role = "agent"
)

// Identity is one client identity the NATS server accepts: its role, the
// agent's name for RoleAgent, and the nkey public key it proves with.
type Identity struct {
	Role      Role
	Agent     string
	PublicKey string
}

// streamAccess is what a role may do with one JetStream stream: read it
// (stream info, direct and message gets, consumers and their acks), write
// it (publish to its subjects, purge and delete messages), and create or
// update it (bus.Setup).
type streamAccess struct {
	stream   string
	subjects []string // the stream's subjects, for writers
	read     bool
	write    bool
}

func kvStream(bucket string) string     { return "KV_" + bucket }
func kvSubjects(bucket string) []string { return []string{"$KV." + bucket + ".>"} }

// allStreams lists every stream bus.Setup manages, for the roles allowed
// to set the farm up.
func allStreams() []string {
	return []string{
		StreamRequests, StreamEvents,
		kvStream(BucketBuilds), kvStream(BucketIdempotency), kvStream(BucketInflight), kvStream(BucketSealNonces),
		kvStream(BucketLeader), kvStream(BucketAgents), kvStream(BucketCASUsage), "OBJ_" + BucketCAS,
		"OBJ_" + BucketOutputs,
	}
}

// Permissions returns the nats-server permissions of role; agent is the
// agent's name for RoleAgent. They are what DESIGN.md's security model
// promises: least privilege per role, agents confined to their own name.
func Permissions(role Role, agent string) (*server.Permissions, error) {
	var (
		pub, sub  []string
		streams   []streamAccess
		manage    bool
		responses bool
	)
	switch role {
	case RoleGateway:
		manage = true
		for _, b := range []string{BucketBuilds, BucketIdempotency, BucketInflight, BucketSealNonces, BucketCASUsage} {
			streams = append(streams, streamAccess{stream: kvStream(b), subjects: kvSubjects(b), read: true, write: true})
		}
		streams = append(streams,
			streamAccess{stream: "OBJ_" + BucketCAS, subjects: []string{"$O." + BucketCAS + ".>"}, read: true, write: true},
			streamAccess{stream: StreamEvents, subjects: []string{subjectEventsPrefix + ">"}, read: true, write: true},
			streamAccess{stream: StreamRequests, subjects: []string{SubjectRequests}, write: true},
			streamAccess{stream: kvStream(BucketAgents), read: true},
			// Builds' exported outputs, for ReadOutput.
			streamAccess{stream: "OBJ_" + BucketOutputs, read: true},
			// The CAS garbage collector's lease, and no other key.
			streamAccess{stream: kvStream(BucketLeader), subjects: []string{"$KV." + BucketLeader + "." + LeaderKeyCASGC}, read: true, write: true},
		)
		// Drain requests to any agent (DrainAgent), answered on _INBOX; ">"
		// as an agent name may have dots.
		pub = append(pub, subjectCancelPrefix+"*", subjectDrainPrefix+">", SubjectCASDeleted)
		sub = append(sub, "_INBOX.>", SubjectCASDeleted)
	case RoleScheduler:
		manage, responses = true, true
		streams = append(streams,
			streamAccess{stream: kvStream(BucketBuilds), subjects: kvSubjects(BucketBuilds), read: true, write: true},
			streamAccess{stream: kvStream(BucketLeader), subjects: []string{"$KV." + BucketLeader + "." + LeaderKeyScheduler}, read: true, write: true},
			streamAccess{stream: kvStream(BucketAgents), read: true},
			streamAccess{stream: StreamRequests, subjects: []string{SubjectRequests}, read: true, write: true},
			streamAccess{stream: StreamEvents, subjects: []string{subjectEventsPrefix + ">"}, write: true},
		)
		sub = append(sub, "_INBOX.>", subjectPullPrefix+">", subjectWithdrawPrefix+">", subjectReportPrefix+">")
		// A timed-out build's cancellation, as the gateway's CancelBuild.
		pub = append(pub, subjectCancelPrefix+"*")
	case RoleAgent:
		if err := CheckAgentName(agent); err != nil {
			return nil, err
		}
		streams = append(streams,
			streamAccess{stream: "OBJ_" + BucketCAS, read: true},
			// The outputs of the builds it runs (--output): written, and
			// read back to skip the blobs already there.
			streamAccess{stream: "OBJ_" + BucketOutputs, subjects: []string{"$O." + BucketOutputs + ".>"}, read: true, write: true},
		)
		pub = append(pub,
			"$JS.API.STREAM.INFO."+kvStream(BucketAgents), // open the bucket
			"$KV."+BucketAgents+"."+agent,                 // its own heartbeat
			PullSubject(agent), WithdrawSubject(agent), ReportSubject(agent),
		)
		sub = append(sub, AgentInboxPrefix(agent)+".>", subjectCancelPrefix+"*", DrainSubject(agent))
		// The answer to a drain request, on the gateway's inbox.
		responses = true
	default:
		return nil, fmt.Errorf("unknown NATS role %q", role)
	}
	pub = append(pub, "$JS.API.INFO")
	for _, s := range streams {
		if s.read {
			pub = append(pub,
				"$JS.API.STREAM.INFO."+s.stream,
				"$JS.API.STREAM.MSG.GET."+s.stream,
				"$JS.API.DIRECT.GET."+s.stream,
				"$JS.API.DIRECT.GET."+s.stream+".>",
				"$JS.API.CONSUMER.CREATE."+s.stream,
				"$JS.API.CONSUMER.CREATE."+s.stream+".>",
				"$JS.API.CONSUMER.DURABLE.CREATE."+s.stream+".>",
				"$JS.API.CONSUMER.INFO."+s.stream+".>",
				"$JS.API.CONSUMER.DELETE."+s.stream+".>",
				"$JS.API.CONSUMER.MSG.NEXT."+s.stream+".>",
				"$JS.ACK."+s.stream+".>",
				"$JS.FC."+s.stream+".>",
			)
		}
		if s.write {
			pub = append(pub, s.subjects...)
			if strings.HasSuffix(s.subjects[0], ">") { // purges only for writers of the whole stream
				pub = append(pub, "$JS.API.STREAM.PURGE."+s.stream, "$JS.API.STREAM.MSG.DELETE."+s.stream)
			}
			if !s.read {
				pub = append(pub, "$JS.API.STREAM.INFO."+s.stream)
			}
		}
	}
	if manage {
		for _, s := range allStreams() {
			pub = append(pub, "$JS.API.STREAM.INFO."+s, "$JS.API.STREAM.CREATE."+s, "$JS.API.STREAM.UPDATE."+s)
		}
	}
	slices.Sort(pub)
	p := &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: slices.Compact(pub)},
		Subscribe: &server.SubjectPermission{Allow: sub},
	}
	if responses {
		// Schedulers: answers to pulls (held up to a minute) and reports.
		// Agents: answers to drain requests.
		p.Response = &server.ResponsePermission{MaxMsgs: 1, Expires: server.DEFAULT_ALLOW_RESPONSE_EXPIRATION}
	}
	return p, nil
}

// NkeyUsers turns identities into the embedded server's users.
func NkeyUsers(ids []Identity) ([]*server.NkeyUser, error) {
	users := make([]*server.NkeyUser, 0, len(ids))
	for _, id := range ids {
		p, err := Permissions(id.Role, id.Agent)
		if err != nil {
			return nil, err
		}
		users = append(users, &server.NkeyUser{Nkey: id.PublicKey, Permissions: p})
	}
	return users, nil
}

// AuthorizationConfig renders identities as a nats-server configuration
// block (authorization { users = [...] }) with the same permissions the
// embedded server gets, for a farm that runs its own NATS servers (see
// deploy/nats). A public key may be a placeholder such as GATEWAY_NKEY.
func AuthorizationConfig(ids []Identity) (string, error) {
	var b strings.Builder
	b.WriteString("# Generated by kiln (bus.AuthorizationConfig): one nkey per role, one per agent.\n")
	b.WriteString("authorization {\n  users = [\n")
	for _, id := range ids {
		p, err := Permissions(id.Role, id.Agent)
		if err != nil {
			return "", err
		}
		what := string(id.Role)
		if id.Role == RoleAgent {
			what += " " + id.Agent
		}
		fmt.Fprintf(&b, "    # %s\n    {\n      nkey: %q\n      permissions: {\n", what, id.PublicKey)
		writeList(&b, "publish", p.Publish.Allow)
		writeList(&b, "subscribe", p.Subscribe.Allow)
		if p.Response != nil {
			fmt.Fprintf(&b, "        allow_responses: { max: %d, expires: %q }\n", p.Response.MaxMsgs, p.Response.Expires.String())
		}
		b.WriteString("      }\n    }\n")
	}
	b.WriteString("  ]\n}\n")
	return b.String(), nil
}

func writeList(b *strings.Builder, name string, subjects []string) {
	fmt.Fprintf(b, "        %s: {\n          allow: [\n", name)
	for _, s := range subjects {
		fmt.Fprintf(b, "            %q\n", s)
	}
	b.WriteString("          ]\n        }\n")
}
