package bus

import (
	"errors"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// IsUnavailable reports whether err means the NATS cluster could not serve
// a request now but may later: a stream, bucket or the JetStream metadata
// has no leader because too few servers are up (no quorum), nobody answered,
// the request timed out inside NATS, or the connection is down. Whether a
// write that failed so was applied is not known: it may still be committed
// when quorum returns.
//
// A deadline of the caller's own context also surfaces as
// context.DeadlineExceeded, which this does not count; a caller whose
// context is still live may treat that one as unavailability too.
func IsUnavailable(err error) bool {
	if err == nil {
		return false
	}
	switch {
	case errors.Is(err, nats.ErrNoResponders), errors.Is(err, jetstream.ErrNoStreamResponse),
		errors.Is(err, nats.ErrTimeout), errors.Is(err, nats.ErrConnectionClosed),
		errors.Is(err, nats.ErrConnectionDraining), errors.Is(err, nats.ErrDisconnected),
		errors.Is(err, nats.ErrConnectionReconnecting), errors.Is(err, nats.ErrNoServers),
		errors.Is(err, jetstream.ErrJetStreamNotEnabled):
		return true
	}
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) {
		return false
	}
	switch apiErr.ErrorCode {
	case errCodeInsufficientResources:
		return false // a server's storage or memory limit, not its absence
	case errCodeClusterNotAvailable, errCodeClusterIncomplete, errCodeClusterNotLeader, errCodeStreamOffline:
		return true
	}
	return apiErr.Code == 503
}

// JetStream API error codes of a cluster missing servers (nats-server's
// errors.json).
const (
	errCodeClusterIncomplete   jetstream.ErrorCode = 10004 // incomplete results
	errCodeClusterNotAvailable jetstream.ErrorCode = 10008 // JetStream system temporarily unavailable
	errCodeClusterNotLeader    jetstream.ErrorCode = 10009 // JetStream cluster can not handle request
	errCodeStreamOffline       jetstream.ErrorCode = 10118 // stream is offline
)
