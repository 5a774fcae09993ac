package kiln

import (
	"context"

	"google.golang.org/grpc/credentials"
)

// bearerToken is per-RPC credentials that send a tenant's token.
type bearerToken string

var _ credentials.PerRPCCredentials = bearerToken("")

// GetRequestMetadata returns the authorization header for one RPC.
func (t bearerToken) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(t)}, nil
}

// RequireTransportSecurity allows the token over plaintext until the gateway
// serves TLS to clients.
func (bearerToken) RequireTransportSecurity() bool { return false }
