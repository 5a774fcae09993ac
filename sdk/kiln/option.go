package kiln

import (
	"crypto/tls"
	"time"

	"google.golang.org/grpc"
)

// Option configures a Client created by Dial.
type Option func(*options)

type options struct {
	token       string
	tlsFiles    TLSFiles
	tlsConfig   *tls.Config
	plaintext   bool
	dialOptions []grpc.DialOption
	// outageLimit bounds how long the client keeps resuming a watch, an
	// upload or a StartBuild while no gateway answers.
	outageLimit time.Duration
	// backoff is the wait before the first retry; it doubles per attempt
	// up to maxBackoff.
	backoff time.Duration
}

const (
	defaultOutageLimit = time.Minute
	defaultBackoff     = 200 * time.Millisecond
	maxBackoff         = 5 * time.Second
)

func defaultOptions() options {
	return options{outageLimit: defaultOutageLimit, backoff: defaultBackoff}
}

// WithToken makes every RPC carry "authorization: Bearer <token>" metadata.
// The token travels only over TLS, or in plaintext to a gateway on this
// machine (loopback or unix socket); Dial refuses it otherwise
// (ErrPlaintextToken).
func WithToken(token string) Option {
	return func(o *options) { o.token = token }
}

// WithTLSFiles connects with TLS, verifying the gateway with files.CA (the
// system's roots if empty) and presenting files.Cert/Key to a gateway that
// requires mutual TLS. Without it TLS is used for every gateway but one on
// this machine, with the system's roots.
func WithTLSFiles(files TLSFiles) Option {
	return func(o *options) { o.tlsFiles = files }
}

// WithTLSConfig connects with TLS configured by cfg (it wins over
// WithTLSFiles).
func WithTLSConfig(cfg *tls.Config) Option {
	return func(o *options) { o.tlsConfig = cfg }
}

// WithInsecurePlaintext connects without TLS even to a gateway that is not
// on this machine. A token is still never sent that way: Dial fails with
// ErrPlaintextToken.
func WithInsecurePlaintext() Option {
	return func(o *options) { o.plaintext = true }
}

// WithDialOptions adds gRPC dial options, after the client's own (transport
// credentials and, with WithToken, the bearer token).
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(o *options) { o.dialOptions = append(o.dialOptions, opts...) }
}

// WithFailover sets how long the client rides out an outage of its
// gateways. A broken event stream (Build, Watch) or upload stream, and a
// build start or Retry (both under an idempotency key), are retried on
// whichever gateway answers, waiting backoff before the first retry and
// doubling the wait (up to 5s) after each, until outage has passed
// without progress (an event, a stored blob); then the call fails with
// codes.Unavailable naming the gateways. The default is 1 minute, starting at 200ms. Other
// calls that only read are retried by gRPC a few times within about two
// seconds.
func WithFailover(outage, backoff time.Duration) Option {
	return func(o *options) {
		o.outageLimit = max(outage, 0)
		o.backoff = max(backoff, 0)
	}
}
