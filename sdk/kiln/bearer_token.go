package kiln

import (
	"context"

	"google.golang.org/grpc/credentials"
)

// bearerToken is per-RPC credentials that send a tenant's token.
type bearerToken struct {
	token string
	// requireTLS is set for every gateway but a loopback one: gRPC then
	// refuses to send the token over a connection without TLS.
	requireTLS bool
}

var _ credentials.PerRPCCredentials = bearerToken{}

// GetRequestMetadata returns the authorization header for one RPC.
func (t bearerToken) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + t.token}, nil
}

// RequireTransportSecurity makes gRPC refuse to send the token in
// plaintext, except to a loopback gateway (where it never leaves the
// machine).
func (t bearerToken) RequireTransportSecurity() bool { return t.requireTLS }
