package cli

import (
	"context"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"strings"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules/gitctx"
	"github.com/kilnbuild/kiln/proto/rules/namedctx"
	"github.com/kilnbuild/kiln/sdk/kiln"
)

// setContext takes kiln build's PATH argument, arg, with -f's value,
// file: a local directory (-f resolved as docker resolves it), or a Git
// URL in buildx's syntax ("https://host/repo.git#ref:subdir",
// gitctx.Parse) that the farm fetches, with -f naming the Dockerfile
// inside the repository's subdirectory (or "-", standard input).
func (o *buildOptions) setContext(arg, file string) error {
	o.dockerfileStdin = file == "-"
	if gitctx.IsGitURL(arg) {
		u, err := gitctx.Parse(arg)
		if err != nil {
			return &usageError{msg: fmt.Sprintf("build context: %v", err)}
		}
		o.spec.GitContext = u.String()
		if file != "" && file != "-" {
			clean := path.Clean(filepath.ToSlash(file))
			if path.IsAbs(clean) || clean == ".." || strings.HasPrefix(clean, "../") {
				return &usageError{msg: fmt.Sprintf("-f %s: with a Git URL context, -f names the Dockerfile inside the repository (a relative path), or - for standard input", file)}
			}
			o.spec.Dockerfile = clean
		}
		return nil
	}
	o.contextDir = arg
	if o.contextDir == "-" || strings.Contains(o.contextDir, "://") {
		return &usageError{msg: fmt.Sprintf("build context %q is not supported: PATH must be a local directory or a Git URL (https://host/repo.git#ref:subdir)", o.contextDir)}
	}
	fi, err := os.Stat(o.contextDir)
	if err != nil {
		return &usageError{msg: fmt.Sprintf("build context %q: %v", o.contextDir, unwrapPathError(err))}
	}
	if !fi.IsDir() {
		return &usageError{msg: fmt.Sprintf("build context %q is not a directory", o.contextDir)}
	}
	o.dockerfile, err = resolveDockerfile(o.contextDir, file)
	return err
}

// defaultRepository is the build's repository when --repository is not
// given: the CI project, else, for a Git URL context, the URL (and its
// subdirectory, as for a local checkout), else the local directory's.
func (o *buildOptions) defaultRepository(lookupEnv func(string) (string, bool)) string {
	if o.spec.GitContext == "" {
		return detectRepository(o.contextDir, lookupEnv)
	}
	for _, env := range []string{"CI_PROJECT_PATH", "GITHUB_REPOSITORY"} {
		if v, ok := lookupEnv(env); ok && v != "" {
			return v
		}
	}
	u, _ := gitctx.Parse(o.spec.GitContext) // setContext checked it
	if u.Subdir != "" {
		return u.Remote + "//" + u.Subdir
	}
	return u.Remote
}

// parseBuildContexts takes --build-context NAME=VALUE values as buildx
// does (namedctx.ParseFlag): a local directory is kept in
// o.buildContexts, to be packed and uploaded like the main context;
// docker-image:// and Git URLs go into the spec as sources.
func (o *buildOptions) parseBuildContexts(values []string) error {
	for _, v := range values {
		name, value, kind, err := namedctx.ParseFlag(v)
		if err != nil {
			return &usageError{msg: err.Error()}
		}
		if _, ok := o.buildContexts[name]; ok || hasNamedContext(o.spec, name) {
			return &usageError{msg: fmt.Sprintf("--build-context %s is given twice", name)}
		}
		if kind != namedctx.KindLocal {
			o.spec.BuildContexts = append(o.spec.BuildContexts, &kilnv1.NamedContext{Name: name, Source: value})
			continue
		}
		fi, err := os.Stat(value)
		if err != nil {
			return &usageError{msg: fmt.Sprintf("--build-context %s=%s: %v", name, value, unwrapPathError(err))}
		}
		if !fi.IsDir() {
			return &usageError{msg: fmt.Sprintf("--build-context %s=%s is not a directory", name, value)}
		}
		if o.buildContexts == nil {
			o.buildContexts = map[string]string{}
		}
		o.buildContexts[name] = value
	}
	if n := len(o.buildContexts) + len(o.spec.BuildContexts); n > namedctx.MaxContexts {
		return &usageError{msg: fmt.Sprintf("%d --build-context values given, at most %d", n, namedctx.MaxContexts)}
	}
	return nil
}

func hasNamedContext(spec *kilnv1.BuildSpec, name string) bool {
	for _, nc := range spec.GetBuildContexts() {
		if nc.GetName() == name {
			return true
		}
	}
	return false
}

// packContexts packs the build's main context (nil for a Git URL
// context, which the farm fetches) and its local named contexts, each the
// same way (kiln.PackContext, kiln.PackNamedContext).
func (o *buildOptions) packContexts(ctx context.Context, opts []kiln.PackOption) (*kiln.Context, map[string]*kiln.Context, error) {
	var bc *kiln.Context
	if o.spec.GitContext == "" {
		var err error
		if bc, err = kiln.PackContext(ctx, o.contextDir, o.dockerfile, opts...); err != nil {
			return nil, nil, err
		}
	}
	var named map[string]*kiln.Context
	for name, dir := range o.buildContexts {
		nc, err := kiln.PackNamedContext(ctx, dir, opts...) // a Dockerfile option is moot for it
		if err != nil {
			return nil, nil, fmt.Errorf("--build-context %s: %w", name, err)
		}
		if named == nil {
			named = map[string]*kiln.Context{}
		}
		named[name] = nc
	}
	return bc, named, nil
}
