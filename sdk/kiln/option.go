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
	// reconnects bounds the consecutive attempts to re-open a broken watch
	// stream without receiving an event in between.
	reconnects int
	// backoff is the wait before the first reconnect; it doubles per attempt
	// up to maxBackoff.
	backoff time.Duration
}

const (
	defaultReconnects = 8
	defaultBackoff    = 200 * time.Millisecond
	maxBackoff        = 5 * time.Second
)

func defaultOptions() options {
	return options{reconnects: defaultReconnects, backoff: defaultBackoff}
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

// WithReconnect sets how a broken WatchBuild stream is resumed: at most
// attempts consecutive reconnects without an event in between, waiting
// backoff before the first and doubling the wait (up to 5s) after each.
// The default is 8 attempts starting at 200ms.
func WithReconnect(attempts int, backoff time.Duration) Option {
	return func(o *options) {
		o.reconnects = max(attempts, 0)
		o.backoff = max(backoff, 0)
	}
}
