package kiln

import (
	"time"

	"google.golang.org/grpc"
)

// Option configures a Client created by Dial.
type Option func(*options)

type options struct {
	token       string
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
// The token is sent over plaintext connections too, as the farm does not
// offer TLS to clients yet.
func WithToken(token string) Option {
	return func(o *options) { o.token = token }
}

// WithDialOptions adds gRPC dial options, after the client's own (insecure
// transport credentials and, with WithToken, the bearer token).
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
