package bus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Conn is a NATS connection with its JetStream context.
type Conn struct {
	NC *nats.Conn
	JS jetstream.JetStream
}

// Connect dials NATS at url (comma-separated for a cluster), naming the
// connection after the service, and retries until ctx ends so services may
// start before the NATS cluster. extra adds options: credentials and TLS
// (ClientAuth.Options), an agent's inbox prefix. A server that refuses the
// credentials fails the connection at once.
func Connect(ctx context.Context, url, name string, extra ...nats.Option) (*Conn, error) {
	opts := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250 * time.Millisecond),
		nats.RetryOnFailedConnect(true),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			// Permission violations arrive here; they would otherwise
			// show only as a request timing out.
			slog.Warn("nats", "connection", name, "err", err)
		}),
	}
	opts = append(opts, extra...)
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return nil, fmt.Errorf("connect to nats %s: %w", url, err)
	}
	for !nc.IsConnected() {
		if err := nc.LastError(); isAuthError(err) {
			nc.Close()
			return nil, fmt.Errorf("connect to nats %s: %w", url, err)
		}
		select {
		case <-ctx.Done():
			nc.Close()
			return nil, fmt.Errorf("connect to nats %s: %w", url, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	return &Conn{NC: nc, JS: js}, nil
}

func isAuthError(err error) bool {
	return errors.Is(err, nats.ErrAuthorization) || errors.Is(err, nats.ErrAuthExpired) ||
		errors.Is(err, nats.ErrAuthRevoked) || errors.Is(err, nats.ErrAccountAuthExpired) ||
		(err != nil && strings.Contains(strings.ToLower(err.Error()), "authorization violation"))
}

// Close drains and closes the connection.
func (c *Conn) Close() {
	if c == nil || c.NC == nil {
		return
	}
	_ = c.NC.Drain()
	c.NC.Close()
}

// Limits bound what the farm keeps.
type Limits struct {
	// EventsMaxAge is how long build events stay replayable.
	EventsMaxAge time.Duration
	// AgentTTL is how long an agent heartbeat stays without renewal.
	AgentTTL time.Duration
	// Replicas is the stream replication factor (1 for a single server).
	Replicas int
}

// DefaultLimits are used when a service is given none.
var DefaultLimits = Limits{EventsMaxAge: 7 * 24 * time.Hour, AgentTTL: 15 * time.Second, Replicas: 1}

// SealNonceTTL is how long BucketSealNonces remembers a seal nonce: a
// sealed value copied from a build record older than this could be replayed
// by its own tenant in a new build with the old nonce.
const SealNonceTTL = 30 * 24 * time.Hour

// Setup creates or updates every stream, bucket and object store kiln uses.
// Every service calls it at start, so any may come up first.
func Setup(ctx context.Context, js jetstream.JetStream, l Limits) error {
	if l.Replicas == 0 {
		l.Replicas = 1
	}
	if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:       StreamRequests,
		Subjects:   []string{SubjectRequests},
		Retention:  jetstream.WorkQueuePolicy,
		Storage:    jetstream.FileStorage,
		Replicas:   l.Replicas,
		Duplicates: 2 * time.Minute,
	}); err != nil {
		return fmt.Errorf("stream %s: %w", StreamRequests, err)
	}
	if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:      StreamEvents,
		Subjects:  []string{subjectEventsPrefix + ">"},
		Retention: jetstream.LimitsPolicy,
		Storage:   jetstream.FileStorage,
		Replicas:  l.Replicas,
		MaxAge:    l.EventsMaxAge,
	}); err != nil {
		return fmt.Errorf("stream %s: %w", StreamEvents, err)
	}
	for _, kv := range []jetstream.KeyValueConfig{
		{Bucket: BucketBuilds, History: 1, Storage: jetstream.FileStorage, Replicas: l.Replicas},
		{Bucket: BucketIdempotency, History: 1, Storage: jetstream.FileStorage, Replicas: l.Replicas},
		{Bucket: BucketInflight, History: 1, Storage: jetstream.FileStorage, Replicas: l.Replicas},
		{Bucket: BucketLeader, History: 1, Storage: jetstream.FileStorage, Replicas: l.Replicas},
		{Bucket: BucketAgents, History: 1, Storage: jetstream.FileStorage, Replicas: l.Replicas, TTL: l.AgentTTL},
		{Bucket: BucketSealNonces, History: 1, Storage: jetstream.FileStorage, Replicas: l.Replicas, TTL: SealNonceTTL},
		{Bucket: BucketCASUsage, History: 1, Storage: jetstream.FileStorage, Replicas: l.Replicas},
	} {
		if _, err := js.CreateOrUpdateKeyValue(ctx, kv); err != nil {
			return fmt.Errorf("key-value bucket %s: %w", kv.Bucket, err)
		}
	}
	if _, err := js.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{
		Bucket: BucketCAS, Storage: jetstream.FileStorage, Replicas: l.Replicas,
	}); err != nil {
		return fmt.Errorf("object store %s: %w", BucketCAS, err)
	}
	return nil
}

// IsNotFound reports whether err means a KV key or object does not exist.
func IsNotFound(err error) bool {
	return errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrObjectNotFound)
}

// Ready reports whether the connection is up, for /readyz.
func (c *Conn) Ready(context.Context) error {
	if !c.NC.IsConnected() {
		return fmt.Errorf("nats not connected (%s)", c.NC.Status())
	}
	return nil
}

// WaitForSetup calls open until it stops failing because a stream, bucket
// or object store does not exist yet, or ctx ends: a client that may not
// set the farm up (an agent) waits for a gateway or scheduler to do it.
func WaitForSetup(ctx context.Context, open func(context.Context) error) error {
	for {
		err := open(ctx)
		if err == nil || !notSetUp(err) {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the farm's streams (a gateway or scheduler sets them up): %w", err)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func notSetUp(err error) bool {
	return errors.Is(err, jetstream.ErrStreamNotFound) || errors.Is(err, jetstream.ErrBucketNotFound)
}

// IsWrongRevision reports whether a KV compare-and-swap lost to another
// writer: the key changed since the revision it was given (or, for a
// create, it exists already).
func IsWrongRevision(err error) bool {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence {
		return true
	}
	return errors.Is(err, jetstream.ErrKeyExists)
}
