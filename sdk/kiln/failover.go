package kiln

import (
	"context"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/grpc/status"
)

// How a Client fails over between gateways.
//
// One gRPC ClientConn holds every gateway: a list's through a resolver that
// hands gRPC the whole list, a DNS name's through gRPC's dns resolver (every
// A and AAAA record). The balancer is pick_first over the list shuffled once
// per Client: each Client talks to one gateway at a time, so one build's
// upload, start and watch go to the same gateway while it lives, with one
// TLS handshake; many clients spread over the gateways. When that gateway
// goes, gRPC walks the list for the next one that connects, starting the
// next attempt 250ms into a connect that hangs (happy eyeballs), and stays
// there. round_robin would keep a connection to every gateway and spread one
// build's calls over them: N handshakes per command, for a client that
// makes a handful of calls.
//
// What a broken call does depends on whether repeating it is harmless:
//
//   - unary calls that read, or set a state twice to the same effect
//     (GetBuild, ListBuilds, CancelBuild, GetSecretsKey, PutManifest,
//     FindMissingBlobs, ListAgents, DrainAgent), are retried by gRPC on
//     UNAVAILABLE per the service config below, on whichever gateway
//     answers;
//   - StartBuild is retried by the Client only with an idempotency key: a
//     gateway that died after queueing the build but before answering has
//     it under the key, and the retry gets that build back;
//   - UploadBlobs resumes with the blobs the farm still lacks (blobs are
//     content-addressed: what arrived before the break stays);
//   - WatchBuild resumes from the sequence after the last event delivered.
//
// The last three keep trying while a gateway answers now and then, and
// give up after an outage limit without progress (WithFailover).

// listScheme is the resolver scheme of a gateway list's ClientConn. Its
// resolver is the Client's own (grpc.WithResolvers), never registered
// globally.
const listScheme = "kiln-gateways"

// serviceConfig picks the balancer and the unary calls gRPC retries on
// UNAVAILABLE. StartBuild, WatchBuild and UploadBlobs are not among them:
// the Client resumes those itself.
const serviceConfig = `{
  "loadBalancingConfig": [{"pick_first": {"shuffleAddressList": true}}],
  "methodConfig": [{
    "name": [
      {"service": "kiln.v1.BuildService", "method": "GetBuild"},
      {"service": "kiln.v1.BuildService", "method": "ListBuilds"},
      {"service": "kiln.v1.BuildService", "method": "CancelBuild"},
      {"service": "kiln.v1.BuildService", "method": "GetSecretsKey"},
      {"service": "kiln.v1.ContextService", "method": "PutManifest"},
      {"service": "kiln.v1.ContextService", "method": "FindMissingBlobs"},
      {"service": "kiln.v1.AgentService"}
    ],
    "retryPolicy": {
      "maxAttempts": 5,
      "initialBackoff": "0.1s",
      "maxBackoff": "1s",
      "backoffMultiplier": 2,
      "retryableStatusCodes": ["UNAVAILABLE"]
    }
  }]
}`

// failoverDialOptions are the dial options that make a ClientConn fail
// over across g, and the target to dial.
func failoverDialOptions(g gateways) (string, []grpc.DialOption) {
	opts := []grpc.DialOption{
		grpc.WithDefaultServiceConfig(serviceConfig),
		// A gateway that came back is tried again within 5s, not gRPC's
		// default of up to 2 minutes.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: time.Second, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 5 * time.Second},
			MinConnectTimeout: 20 * time.Second,
		}),
	}
	if !g.list() {
		return g.target, opts
	}
	r := manual.NewBuilderWithScheme(listScheme)
	r.InitialState(g.resolverState())
	opts = append(opts, grpc.WithResolvers(r), grpc.WithChainUnaryInterceptor(nameGateways(g)))
	// The channel's authority is the first gateway's; each connection is
	// verified against its own gateway's host (resolver.Address.ServerName).
	return listScheme + ":///" + g.addrs[0], opts
}

// nameGateways adds the gateways of the list to an UNAVAILABLE error, so
// that it says which gateways were tried, not only the last one.
func nameGateways(g gateways) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		err := invoker(ctx, method, req, reply, cc, opts...)
		if s, ok := status.FromError(err); ok && s.Code() == codes.Unavailable {
			return status.Errorf(codes.Unavailable, "%s (%s)", s.Message(), g.tried())
		}
		return err
	}
}

// tried names the gateways for an error message.
func (g gateways) tried() string {
	if g.list() {
		return "gateways tried: " + g.String()
	}
	return "gateway " + g.target
}

// retrier repeats calls that fail with codes.Unavailable: on whichever
// gateway answers next, waiting backoff before the first retry and
// doubling the wait up to maxBackoff, until an outage of limit with no
// progress, or the context ends.
type retrier struct {
	backoff, limit time.Duration
	gateways       gateways
	// now and sleep are the clock; nil: the system's.
	now   func() time.Time
	sleep func(ctx context.Context, d time.Duration) error
}

// outage is one run of failed attempts, reset by progress.
type outage struct {
	r        *retrier
	since    time.Time
	failures int
}

func (r *retrier) outage() *outage { return &outage{r: r} }

// progressed says an attempt got somewhere: the outage is over.
func (o *outage) progressed() { o.failures = 0 }

// wait decides whether err is worth another attempt; if so it waits the
// backoff and returns nil, else it returns the error to give up with.
func (o *outage) wait(ctx context.Context, err error) error {
	if status.Code(err) != codes.Unavailable || ctx.Err() != nil {
		return err
	}
	now := o.r.clock()
	if o.failures == 0 {
		o.since = now
	}
	o.failures++
	if down := now.Sub(o.since); down >= o.r.limit {
		what := fmt.Sprintf("gave up after %d attempts over %s", o.failures, down.Round(time.Millisecond))
		if !strings.Contains(err.Error(), "gateways tried: ") {
			what += " (" + o.r.gateways.tried() + ")"
		}
		return fmt.Errorf("%s: %w", what, err)
	}
	d := o.r.backoff << (o.failures - 1)
	if d > maxBackoff || d < o.r.backoff {
		d = maxBackoff
	}
	if d == 0 {
		return nil
	}
	if o.r.sleep != nil {
		if o.r.sleep(ctx, d) != nil {
			return err
		}
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return err
	case <-t.C:
		return nil
	}
}

func (r *retrier) clock() time.Time {
	if r.now != nil {
		return r.now()
	}
	return time.Now()
}

// retry calls f until it succeeds, fails with a code other than
// Unavailable, or the outage limit is reached.
func (r *retrier) retry(ctx context.Context, f func() error) error {
	o := r.outage()
	for {
		err := f()
		if err == nil {
			return nil
		}
		if err := o.wait(ctx, err); err != nil {
			return err
		}
	}
}
