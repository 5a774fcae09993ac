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
	// OutputTTL is how long KILN_OUTPUTS keeps a build's exported output
	// (--output) for its client to fetch. 0 leaves an existing bucket's TTL
	// as it is and creates a missing one with DefaultOutputTTL: only the
	// scheduler is given --output-ttl, and a gateway's Setup must not undo it.
	OutputTTL time.Duration
}

// DefaultLimits are used when a service is given none.
var DefaultLimits = Limits{EventsMaxAge: 7 * 24 * time.Hour, AgentTTL: 15 * time.Second, Replicas: 1}

// DefaultOutputTTL is KILN_OUTPUTS' TTL unless --output-ttl says otherwise.
const DefaultOutputTTL = 24 * time.Hour

// SealNonceTTL is how long BucketSealNonces remembers a seal nonce: a
// sealed value copied from a build record older than this could be replayed
// by its own tenant in a new build with the old nonce.
const SealNonceTTL = 30 * 24 * time.Hour

// Setup creates or updates every stream, bucket and object store kiln uses.
// Every service calls it at start, so any may come up first.
//
// Each gets l.Replicas replicas. An existing one with another count is
// changed in place — JetStream copies its data to the new replicas (R1 to R3)
// or drops the extra ones (R3 to R1) while it keeps serving — so a farm
// moves from one NATS server to a three-node cluster by restarting its
// gateways and schedulers with --nats-replicas 3. A count larger than the
// cluster is refused with the server's error, naming the flag.
//
// While the cluster is unavailable (IsUnavailable: starting, electing, too
// few servers up) Setup retries until ctx ends, so services may start
// together with the NATS servers.
func Setup(ctx context.Context, js jetstream.JetStream, l Limits) error {
	if l.Replicas == 0 {
		l.Replicas = 1
	}
	if l.Replicas < 0 {
		return fmt.Errorf("--nats-replicas %d: must be at least 1", l.Replicas)
	}
	logged := time.Now()
	for {
		// Each attempt's requests are bounded by nats.go's own timeout,
		// not ctx's deadline: a request lost with a NATS node would hold
		// the attempt until that deadline, leaving no time to retry.
		actx, cancel := WithoutDeadline(ctx)
		err := setup(actx, js, l)
		cancel()
		if err == nil || !setupMayRetry(ctx, err) {
			return err
		}
		if time.Since(logged) > 10*time.Second {
			slog.Warn("waiting for the NATS cluster to set up kiln's streams", "replicas", l.Replicas, "err", err)
			logged = time.Now()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the NATS cluster: %w", err)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// setupMayRetry reports whether a Setup error may pass: the cluster is
// unavailable, a NATS request timed out while ctx is live, or a server
// the replicas need is offline (starting, or restarting).
func setupMayRetry(ctx context.Context, err error) bool {
	var apiErr *jetstream.APIError
	return IsUnavailable(err) || errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil ||
		errors.As(err, &apiErr) && apiErr.ErrorCode == errCodeNoSuitablePeers && strings.Contains(apiErr.Description, "peer offline")
}

func setup(ctx context.Context, js jetstream.JetStream, l Limits) error {
	if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:       StreamRequests,
		Subjects:   []string{SubjectRequests},
		Retention:  jetstream.WorkQueuePolicy,
		Storage:    jetstream.FileStorage,
		Replicas:   l.Replicas,
		Duplicates: 2 * time.Minute,
	}); err != nil {
		return setupError(js, l, "stream "+StreamRequests, err)
	}
	if _, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:      StreamEvents,
		Subjects:  []string{subjectEventsPrefix + ">"},
		Retention: jetstream.LimitsPolicy,
		Storage:   jetstream.FileStorage,
		Replicas:  l.Replicas,
		MaxAge:    l.EventsMaxAge,
	}); err != nil {
		return setupError(js, l, "stream "+StreamEvents, err)
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
		if err := setupKeyValue(ctx, js, kv); err != nil {
			return setupError(js, l, "key-value bucket "+kv.Bucket, err)
		}
	}
	// Likewise OBJ_<bucket>.
	if _, err := js.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{
		Bucket: BucketCAS, Storage: jetstream.FileStorage, Replicas: l.Replicas,
	}); err != nil {
		return setupError(js, l, "object store "+BucketCAS, err)
	}
	// KILN_CAS takes JetStream atomic batches (services/cas PutBatch: a
	// batch of small blobs is one synced write); the object-store config
	// has no field for it, and CreateOrUpdateObjectStore turns it off.
	st, err := js.Stream(ctx, "OBJ_"+BucketCAS)
	if err != nil {
		return setupError(js, l, "object store "+BucketCAS, err)
	}
	if cfg := st.CachedInfo().Config; !cfg.AllowAtomicPublish {
		cfg.AllowAtomicPublish = true
		if _, err := js.UpdateStream(ctx, cfg); err != nil {
			return setupError(js, l, "object store "+BucketCAS, err)
		}
	}
	if err := setupOutputs(ctx, js, l); err != nil {
		return setupError(js, l, "object store "+BucketOutputs, err)
	}
	return nil
}

// setupOutputs creates or updates KILN_OUTPUTS with l's TTL (see
// Limits.OutputTTL for 0).
func setupOutputs(ctx context.Context, js jetstream.JetStream, l Limits) error {
	ttl := l.OutputTTL
	if ttl < 0 {
		return fmt.Errorf("--output-ttl %s: must be positive", ttl)
	}
	if ttl == 0 {
		ttl = DefaultOutputTTL
		st, err := js.Stream(ctx, "OBJ_"+BucketOutputs)
		switch {
		case err == nil && st.CachedInfo().Config.MaxAge > 0:
			ttl = st.CachedInfo().Config.MaxAge
		case err != nil && !errors.Is(err, jetstream.ErrStreamNotFound):
			return err
		}
	}
	_, err := js.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{
		Bucket:      BucketOutputs,
		Description: "builds' exported outputs (--output), until their TTL",
		Storage:     jetstream.FileStorage,
		Replicas:    l.Replicas,
		TTL:         ttl,
	})
	return err
}

// setupKeyValue creates or updates one bucket. CreateOrUpdateKeyValue
// updates the bucket's stream (KV_<bucket>) with the whole config, Replicas
// included (TestSetupRaisesReplicas), and always allows direct gets.
//
// With more than one replica a direct get may be answered by a follower
// that has not applied the latest write yet, and kiln decides on what it
// reads from these buckets: a report fenced against a stale ASSIGNED, an
// idempotency key or a leader lease read from the past. So every bucket
// but the agents' heartbeats is read through its stream leader (direct
// gets off): a KV handle bound afterwards uses $JS.API.STREAM.MSG.GET. An
// existing bucket is updated in place without passing through "direct on",
// so a service binding meanwhile never sees it allowed.
func setupKeyValue(ctx context.Context, js jetstream.JetStream, kv jetstream.KeyValueConfig) error {
	direct := kv.Replicas <= 1 || kv.Bucket == BucketAgents
	if !direct {
		if st, err := js.Stream(ctx, kvStreamPrefix+kv.Bucket); err == nil {
			cfg := st.CachedInfo().Config
			if cfg.Replicas == kv.Replicas && !cfg.AllowDirect && cfg.MaxAge == kv.TTL {
				return nil
			}
			cfg.Replicas, cfg.AllowDirect, cfg.MaxAge = kv.Replicas, false, kv.TTL
			_, err = js.UpdateStream(ctx, cfg)
			return err
		} else if !errors.Is(err, jetstream.ErrStreamNotFound) {
			return err
		}
	}
	if _, err := js.CreateOrUpdateKeyValue(ctx, kv); err != nil {
		return err
	}
	if direct {
		return nil
	}
	st, err := js.Stream(ctx, kvStreamPrefix+kv.Bucket)
	if err != nil {
		return err
	}
	cfg := st.CachedInfo().Config
	cfg.AllowDirect = false
	_, err = js.UpdateStream(ctx, cfg)
	return err
}

// kvStreamPrefix prefixes the stream that holds a key-value bucket.
const kvStreamPrefix = "KV_"

// setupError wraps a failure to create or update what; a replica count the
// NATS servers cannot place gets a message naming the flag and the number
// of servers the connection knows of.
func setupError(js jetstream.JetStream, l Limits, what string, err error) error {
	var apiErr *jetstream.APIError
	if l.Replicas > 1 && errors.As(err, &apiErr) {
		switch apiErr.ErrorCode {
		case errCodeReplicasNotSupported:
			return fmt.Errorf("%s: --nats-replicas %d needs a NATS cluster of at least %d servers, but the NATS server is not clustered (use --nats-replicas 1): %w", what, l.Replicas, l.Replicas, err)
		case errCodeNoSuitablePeers, errCodeInsufficientResources:
			if strings.Contains(apiErr.Description, "peer offline") {
				break
			}
			return fmt.Errorf("%s: --nats-replicas %d needs %d NATS servers with JetStream up, and the cluster has %s (lower --nats-replicas or add servers): %w", what, l.Replicas, l.Replicas, knownServers(js), err)
		}
	}
	return fmt.Errorf("%s (%d replicas): %w", what, l.Replicas, err)
}

// JetStream API error codes Setup explains (nats-server's errors.json).
const (
	errCodeNoSuitablePeers       jetstream.ErrorCode = 10005 // JSClusterNoPeersErrF: not enough servers for the replicas
	errCodeInsufficientResources jetstream.ErrorCode = 10023
	errCodeReplicasNotSupported  jetstream.ErrorCode = 10074 // replicas > 1 on a server that is not clustered
)

// knownServers describes the cluster size as this connection sees it: the
// servers it was given and those the cluster told it about.
func knownServers(js jetstream.JetStream) string {
	nc := js.Conn()
	if nc == nil {
		return "fewer"
	}
	n := len(nc.Servers())
	if n == 1 {
		return "1 server"
	}
	return fmt.Sprintf("%d servers", n)
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
	if errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		// what a replicated (R>1) stream answers instead
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant) {
		return true
	}
	return errors.Is(err, jetstream.ErrKeyExists)
}
