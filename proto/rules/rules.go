// Package rules holds the rules both sides of the wire apply: the Go SDK
// and CLI before anything is sent, the gateway when it accepts a request,
// the agent before it acts on one. Each rule lives once, in a subpackage:
//
//	buildctx      context manifest entries, paths, limits (SDK packs, gateway and agent check)
//	secretid      build secret ids and limits              (SDK, CLI, gateway)
//	sshid         --ssh ids, key limits and key parsing     (CLI, SDK, gateway sizes, agent parses)
//	registryhost  registry host names for credentials      (CLI looks up, agent serves)
//	seal          sealing values to the farm's key, bound   (SDK seals, gateway sizes, agent opens)
//	              to a tenant and a build
//	buildtimeout  a build's timeout: positive, at most 24h   (SDK, CLI, gateway; the scheduler words the error)
//	cacheopt      --cache-from/--cache-to syntax, warm-start refs (CLI, gateway, scheduler, agent)
//	buildflags    --network, --add-host, --shm-size, --ulimit, inline Dockerfiles (CLI, gateway, agent)
//	platforms     --platform normalisation                 (CLI, gateway, scheduler, agent)
//	outputs       --output syntax and the exported output  (CLI, SDK, gateway, agent)
//	namedctx      --build-context NAME=VALUE               (CLI, SDK, gateway, scheduler, agent)
//	gitctx        Git URL contexts, credentials by secret  (CLI, gateway, agent)
//	annotations   --annotation syntax, exporter attrs, the index's share (CLI, gateway, agent)
//	attest        --provenance/--sbom/--attest, --call; features a build needs (CLI, gateway, scheduler, agent)
//
// The packages are pure: no I/O, no clock, no gRPC. Their errors are plain
// Go errors whose message a person can act on; those a caller must tell
// apart match ErrInvalid or ErrOverLimit with errors.Is, and the gateway
// turns them into gRPC codes (InvalidArgument, ResourceExhausted) at its
// edge.
package rules

import (
	"errors"
	"fmt"
)

var (
	// ErrInvalid matches errors about input that breaks a rule: the
	// gateway answers codes.InvalidArgument.
	ErrInvalid = errors.New("invalid")
	// ErrOverLimit matches errors about input over a size or count limit:
	// the gateway answers codes.ResourceExhausted.
	ErrOverLimit = errors.New("over a limit")
)

// violation is a broken rule: its message alone, matching its kind.
type violation struct {
	kind error
	msg  string
}

func (v *violation) Error() string { return v.msg }
func (v *violation) Unwrap() error { return v.kind }

// Invalidf returns an error with the formatted message that matches
// ErrInvalid.
func Invalidf(format string, args ...any) error {
	return &violation{kind: ErrInvalid, msg: fmt.Sprintf(format, args...)}
}

// OverLimitf returns an error with the formatted message that matches
// ErrOverLimit.
func OverLimitf(format string, args ...any) error {
	return &violation{kind: ErrOverLimit, msg: fmt.Sprintf(format, args...)}
}
