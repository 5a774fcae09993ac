package gateway

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/distribution/reference"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules"
	"github.com/kilnbuild/kiln/proto/rules/buildctx"
	"github.com/kilnbuild/kiln/proto/rules/buildflags"
	"github.com/kilnbuild/kiln/proto/rules/buildtimeout"
	"github.com/kilnbuild/kiln/proto/rules/cacheopt"
	"github.com/kilnbuild/kiln/proto/rules/outputs"
	"github.com/kilnbuild/kiln/proto/rules/platforms"
)

const (
	maxTags      = 64
	maxBuildArgs = 256
	maxLabels    = 256
	maxValueLen  = 64 << 10
)

func invalid(format string, args ...any) error {
	return status.Errorf(codes.InvalidArgument, format, args...)
}

// validateSpec checks a build spec and fills its defaults. Every message
// names what is wrong so a person can fix it.
func validateSpec(spec *kilnv1.BuildSpec) error {
	if spec == nil {
		return invalid("build spec is missing")
	}
	if spec.Dockerfile == "" {
		spec.Dockerfile = "Dockerfile"
	}
	df, err := buildctx.CleanPath(spec.Dockerfile)
	if err != nil {
		return invalid("dockerfile path %q: %v", spec.Dockerfile, err)
	}
	spec.Dockerfile = df
	if len(spec.Tags) > maxTags {
		return invalid("%d tags given, at most %d allowed", len(spec.Tags), maxTags)
	}
	for _, t := range spec.Tags {
		if err := ValidateTag(t); err != nil {
			return invalid("%v", err)
		}
	}
	if spec.Push && len(spec.Tags) == 0 {
		return invalid("push requested but no tag given: add -t registry/repository:tag")
	}
	if len(spec.BuildArgs) > maxBuildArgs {
		return invalid("%d build args given, at most %d allowed", len(spec.BuildArgs), maxBuildArgs)
	}
	for k, v := range spec.BuildArgs {
		if k == "" || strings.ContainsAny(k, "= \t\n") {
			return invalid("build arg name %q is not valid", k)
		}
		if len(v) > maxValueLen {
			return invalid("build arg %q is %d bytes, at most %d allowed", k, len(v), maxValueLen)
		}
	}
	if len(spec.Labels) > maxLabels {
		return invalid("%d labels given, at most %d allowed", len(spec.Labels), maxLabels)
	}
	for k, v := range spec.Labels {
		if k == "" || strings.ContainsAny(k, "\n") {
			return invalid("label name %q is not valid", k)
		}
		if len(v) > maxValueLen {
			return invalid("label %q is %d bytes, at most %d allowed", k, len(v), maxValueLen)
		}
	}
	if strings.ContainsAny(spec.Target, " \t\n/") {
		return invalid("target %q is not a stage name", spec.Target)
	}
	if _, ok := kilnv1.Builder_name[int32(spec.Builder)]; !ok {
		return invalid("builder %d is not known: leave it unspecified, or ask for BUILDER_CLASSIC or BUILDER_BUILDKIT", spec.Builder)
	}
	if t := spec.GetTimeout(); t != nil {
		if err := t.CheckValid(); err != nil {
			return invalid("timeout is not a valid duration: %v", err)
		}
		if err := buildtimeout.Check(t.AsDuration()); err != nil {
			return invalid("%v", err)
		}
	}
	if err := cacheopt.ValidateAll(spec.CacheFrom, spec.CacheTo); err != nil {
		return invalid("%v", err)
	}
	if err := platforms.CheckSpec(spec.Platforms, spec.Push, outputs.ExportsFiles(spec.GetOutputs())); err != nil {
		return invalid("%v", err)
	}
	if err := buildflags.Validate(spec); err != nil {
		if errors.Is(err, rules.ErrOverLimit) {
			return status.Errorf(codes.ResourceExhausted, "%v", err)
		}
		return invalid("%v", err)
	}
	if err := validateOutputs(spec); err != nil {
		return err
	}
	if err := validateSSH(spec); err != nil {
		return err
	}
	return validateSecrets(spec)
}

// checkNetworkPolicy refuses --network host to a tenant whose policy does
// not allow it, with codes.PermissionDenied naming the setting. A local
// caller's builds carry no policy, which refuses it as it refuses RUN
// --network=host.
func checkNetworkPolicy(ctx context.Context, spec *kilnv1.BuildSpec) error {
	c := callerOf(ctx)
	allow := false
	if !c.local {
		allow = c.tenant.BuildPolicy().GetAllowNetworkHost()
	}
	if err := buildflags.CheckNetwork(spec.GetNetwork(), allow); err != nil {
		if errors.Is(err, buildflags.ErrNetworkHost) {
			return status.Errorf(codes.PermissionDenied, "tenant %s: %v", c.tenant.Name, err)
		}
		return invalid("%v", err)
	}
	return nil
}

// ValidateTag checks that t is a docker image reference a build may be
// tagged with (name[:tag], no digest).
func ValidateTag(t string) error {
	ref, err := reference.ParseNormalizedNamed(t)
	if err != nil {
		return fmt.Errorf("invalid tag %q: %v", t, err)
	}
	if _, ok := ref.(reference.Digested); ok {
		return fmt.Errorf("invalid tag %q: a build cannot be tagged with a digest", t)
	}
	return nil
}

func validateContextRef(ref *kilnv1.ContextRef, limits Limits) error {
	if ref == nil || ref.Digest == nil {
		return invalid("build context is missing: upload it with ContextService and pass its digest")
	}
	if !buildctx.ValidDigest(ref.Digest.Hash) {
		return invalid("context digest %q is not of the form sha256:<64 hex digits>", ref.Digest.Hash)
	}
	if ref.Digest.SizeBytes < 0 {
		return invalid("context size %d is negative", ref.Digest.SizeBytes)
	}
	if ref.Digest.SizeBytes > limits.Context.MaxTotalBytes {
		return status.Errorf(codes.ResourceExhausted, "context is %d bytes, over the limit of %d bytes", ref.Digest.SizeBytes, limits.Context.MaxTotalBytes)
	}
	switch ref.Format {
	case kilnv1.ContextFormat_CONTEXT_FORMAT_TAR, kilnv1.ContextFormat_CONTEXT_FORMAT_MANIFEST:
	default:
		return invalid("context format %s is not known", ref.Format)
	}
	return nil
}
