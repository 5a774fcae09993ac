package engine

import (
	"fmt"

	"github.com/moby/buildkit/session/filesync"
)

// NamedContext is one of a build's --build-context values for the engine:
// a local directory (Dir), served by the build's session under LocalName,
// or a source the engine resolves itself (Source: "docker-image://REF",
// a Git URL), as proto/rules/namedctx checked them.
type NamedContext struct {
	// Name is the name the Dockerfile uses (FROM NAME, COPY --from=NAME),
	// normalised by namedctx.NormalizeName.
	Name string
	// Dir and LocalName are a local context's directory and the name the
	// session serves it under (namedctx.LocalName).
	Dir, LocalName string
	// Source is what the engine fetches for a context that is not local.
	Source string
}

// namedContextAttrs are the Dockerfile frontend's attributes for o's named
// contexts, as buildx passes them: "context:NAME" → "local:LOCALNAME" or
// the source.
func namedContextAttrs(o BuildKitOptions) map[string]string {
	attrs := make(map[string]string, len(o.NamedContexts))
	for _, nc := range o.NamedContexts {
		if nc.Dir != "" {
			attrs["context:"+nc.Name] = "local:" + nc.LocalName
		} else {
			attrs["context:"+nc.Name] = nc.Source
		}
	}
	return attrs
}

// addNamedDirs adds o's local named contexts to the directories the
// session serves, their bytes counted with the main context's.
func addNamedDirs(dirs filesync.StaticDirSource, o BuildKitOptions, c *byteCounter) error {
	for _, nc := range o.NamedContexts {
		if nc.Dir == "" {
			continue
		}
		if _, taken := dirs[nc.LocalName]; taken || nc.LocalName == "" {
			return fmt.Errorf("build context %s: the session cannot serve it as %q", nc.Name, nc.LocalName)
		}
		fs, err := newCountingFS(nc.Dir, c)
		if err != nil {
			return fmt.Errorf("build context %s: %w", nc.Name, err)
		}
		dirs[nc.LocalName] = fs
	}
	return nil
}

// refuseNamedContextsOnDocker refuses named contexts on a Docker engine:
// its /build API passes no "context:NAME" attribute to its BuildKit (the
// gateway and the scheduler keep such builds off Docker agents; this is
// the engine's own guard).
func refuseNamedContextsOnDocker(o BuildKitOptions) error {
	if len(o.NamedContexts) == 0 {
		return nil
	}
	return &BuildError{Message: "--build-context needs a standalone BuildKit agent (kiln-agent --engine buildkit://…): a Docker engine's build API does not pass named contexts to its BuildKit"}
}
