package cli

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules/cacheopt"
	"github.com/kilnbuild/kiln/proto/rules/outputs"
	"github.com/kilnbuild/kiln/sdk/internal/progress"
	"github.com/kilnbuild/kiln/sdk/internal/reference"
	"github.com/kilnbuild/kiln/sdk/kiln"
	"github.com/spf13/pflag"
)

// DefaultGateway is the gateway address used when neither --gateway nor
// KILN_GATEWAY is set: kilnd's default listen address.
const DefaultGateway = "127.0.0.1:7700"

// maxBuildTimeout is the longest --timeout the farm takes (BuildSpec.timeout).
const maxBuildTimeout = 24 * time.Hour

// buildOptions is a validated `kiln build` command line.
type buildOptions struct {
	contextDir string
	// dockerfile is handed to kiln.PackContext: "" (the default), a path
	// relative to contextDir, or an absolute path.
	dockerfile string
	// dockerfileStdin is -f -: the Dockerfile comes from standard input,
	// and is sent apart from the context.
	dockerfileStdin bool
	spec            *kilnv1.BuildSpec
	progress        progress.Mode
	debug           bool // show the farm's internal lines (--debug)
	metadataFile    string
	iidFile         string
	connection      // gateway, token and TLS as Dial options
	idempotencyKey  string
	// detach ends the command once the build is queued (--detach).
	detach bool
	// timeout is how long the farm lets the build take (0: no limit).
	timeout time.Duration
	// secrets are the --secret values by id, read from their files and
	// variables; the SDK seals them before they leave the process.
	secrets map[string][]byte
	// ssh are the --ssh keys by ssh id, read from their files; the SDK
	// seals them like the secrets.
	ssh map[string][]byte
	// trace is the build's tracing (nil: none), set by tracedBuild.
	trace *cliTrace
	// warnings are for stderr: mistakes the build survives.
	warnings []string
	// output is --output's plan: the output the farm exports and where
	// it goes once the build succeeded.
	output outputs.Plan
	// buildContexts are the local --build-context directories by name
	// (sources are in spec.build_contexts).
	buildContexts map[string]string
}

// buildFlags holds the raw values of `kiln build` flags.
type buildFlags struct {
	tags, buildArgs, labels    []string
	file, target, progress     string
	push, noCache, pull, quiet bool
	debug                      bool
	metadataFile, iidFile      string
	conn                       connFlags
	idempotencyKey             string
	repository                 string
	priority                   int32
	agentLabels                []string
	secrets                    []string
	ssh                        []string
	builder                    string
	detach                     bool
	timeout                    time.Duration
	cacheFrom, cacheTo         []string
	buildContexts              []string
	run                        runFlags
	attest                     attestFlags
}

// newBuildFlagSet returns the flag set of `kiln build`, docker-buildx
// compatible where the two overlap.
func newBuildFlagSet(f *buildFlags) *pflag.FlagSet {
	fs := pflag.NewFlagSet("build", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.StringArrayVarP(&f.tags, "tag", "t", nil, `Name and optionally a tag (format: "name:tag"); repeatable`)
	fs.StringVarP(&f.file, "file", "f", "", `Name of the Dockerfile (default: "PATH/Dockerfile"; "-" reads it from standard input); one outside PATH is sent apart from the context`)
	fs.StringArrayVar(&f.buildArgs, "build-arg", nil, "Set a build-time variable (KEY=VALUE, or KEY to take it from the environment); repeatable")
	fs.StringVar(&f.target, "target", "", "Set the target build stage to build")
	fs.StringArrayVar(&f.labels, "label", nil, "Set a metadata label on the image (KEY=VALUE); repeatable")
	fs.BoolVar(&f.push, "push", false, "Push the image to the registry of each tag")
	fs.BoolVar(&f.noCache, "no-cache", false, "Do not use cache when building the image")
	fs.BoolVar(&f.pull, "pull", false, "Always attempt to pull all referenced images")
	fs.StringVar(&f.progress, "progress", "", `Set type of progress output ("auto", "plain", "tty", "json", "rawjson", "quiet"); env KILN_PROGRESS (default "auto": tty on a terminal, else plain)`)
	fs.BoolVarP(&f.quiet, "quiet", "q", false, `Suppress the build output and print the image ID on success (same as --progress quiet)`)
	fs.BoolVar(&f.debug, "debug", false, "Also show the farm's internal lines (the agent's context fetch and work-dir bookkeeping)")
	fs.StringVar(&f.metadataFile, "metadata-file", "", "Write build result metadata to a file (JSON)")
	fs.StringVar(&f.iidFile, "iidfile", "", "Write the image ID to a file")
	f.conn.register(fs)
	fs.StringVar(&f.idempotencyKey, "idempotency-key", "", "Key that makes a retried command attach to the build it already started (default: a random key, so that kiln can retry the start on another gateway without starting the build twice)")
	fs.StringVar(&f.repository, "repository", "", "Source repository, for cache-affinity routing (default: CI project, git remote origin, else the context path)")
	fs.Int32Var(&f.priority, "priority", 0, "Priority among your queued builds (higher first)")
	fs.StringArrayVar(&f.agentLabels, "agent-label", nil, "Run only on agents with this label (KEY=VALUE); repeatable")
	fs.StringArrayVar(&f.ssh, "ssh", nil, `SSH private key to serve to RUN --mount=type=ssh steps, sealed so only the farm's agents can read it (format: "default=$HOME/.ssh/id_ed25519" or "ID=KEY[,KEY...]"; key files only: an ssh-agent socket cannot be forwarded to the farm); repeatable`)
	fs.StringArrayVar(&f.secrets, "secret", nil, `Secret to expose to the build, sealed so only the farm's agents can read it (format: "id=mysecret[,src=/local/secret]" or "id=mysecret,env=VAR"); repeatable`)
	fs.StringVar(&f.builder, "builder", "", `Builder to build with: "classic" or "buildkit" (default: the agent picks, BuildKit where the engine has it)`)
	fs.BoolVarP(&f.detach, "detach", "d", false, "Print the build's id once it is queued and exit; 'kiln logs -f ID' follows it")
	fs.StringArrayVar(&f.cacheFrom, "cache-from", nil, `External cache source (e.g. "type=registry,ref=registry:5000/app:cache", or a bare ref); repeatable`)
	fs.StringArrayVar(&f.cacheTo, "cache-to", nil, `Cache export destination (e.g. "type=registry,ref=registry:5000/app:cache,mode=max" — needs a BuildKit-engine agent — or "type=inline"); repeatable`)
	f.run.register(fs)
	fs.StringArrayVar(&f.buildContexts, "build-context", nil, `Additional build context (NAME=VALUE: a directory, "docker-image://REF" or a Git URL) that FROM NAME and COPY --from=NAME use; repeatable`)
	fs.DurationVar(&f.timeout, "timeout", 0, "Let the farm cancel the build once it has taken this long since it was queued (e.g. 30m; at most 24h; exit status 124)")
	f.attest.register(fs)
	f.run.registerBuildx(fs)
	return fs
}

// parseBuildArgs parses and validates `kiln build` arguments (after the
// subcommand). Environment lookups go through lookupEnv. It returns
// pflag.ErrHelp for --help and a *usageError or a kiln error otherwise.
func parseBuildArgs(args []string, lookupEnv func(string) (string, bool)) (*buildOptions, error) {
	var f buildFlags
	fset := newBuildFlagSet(&f)
	fset.SetOutput(discard{})
	if err := fset.Parse(args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return nil, err
		}
		return nil, &usageError{msg: err.Error()}
	}
	if fset.NArg() != 1 {
		return nil, &usageError{msg: fmt.Sprintf(`"kiln build" requires exactly 1 argument (the build context PATH), got %d`, fset.NArg())}
	}

	o := &buildOptions{
		metadataFile:   f.metadataFile,
		iidFile:        f.iidFile,
		idempotencyKey: f.idempotencyKey,
		detach:         f.detach,
		timeout:        f.timeout,
		spec: &kilnv1.BuildSpec{
			Target:  f.target,
			Push:    f.push,
			NoCache: f.noCache,
			Pull:    f.pull,
		},
	}

	conn, err := f.conn.resolve(fset, lookupEnv)
	if err != nil {
		return nil, err
	}
	o.connection = conn
	if o.idempotencyKey == "" {
		if o.idempotencyKey, err = kiln.NewIdempotencyKey(); err != nil {
			return nil, err
		}
	}

	if o.progress, err = progressMode(fset, f.progress, f.quiet, lookupEnv); err != nil {
		return nil, err
	}
	o.debug = f.debug

	for _, t := range f.tags {
		if _, err := reference.Parse(t); err != nil {
			return nil, &usageError{msg: err.Error()}
		}
	}
	o.spec.Tags = f.tags
	if err := f.run.checkBuildx(fset, o.spec, func(w string) { o.warnings = append(o.warnings, w) }); err != nil {
		return nil, err
	}
	if err := f.run.apply(o.spec); err != nil {
		return nil, err
	}
	o.output = f.run.output
	if err := f.attest.apply(o.spec); err != nil {
		return nil, err
	}
	if o.spec.Push && len(f.tags) == 0 {
		return nil, &usageError{msg: "--push needs at least one --tag naming where to push"}
	}

	if o.spec.BuildArgs, err = parseBuildArgValues(f.buildArgs, lookupEnv); err != nil {
		return nil, err
	}
	for _, name := range secretLookingArgs(f.buildArgs) {
		o.warnings = append(o.warnings, fmt.Sprintf(
			"--build-arg %s looks like a secret: build args are kept in the build record and in the image's history. Pass it with --secret id=%s,env=%s and read it in a RUN --mount=type=secret,id=%s step instead",
			name, name, name, name))
	}
	if o.spec.Labels, err = parseLabels(f.labels); err != nil {
		return nil, err
	}

	if err := o.setContext(fset.Arg(0), f.file); err != nil {
		return nil, err
	}
	if err := o.parseBuildContexts(f.buildContexts); err != nil {
		return nil, err
	}
	o.spec.Priority = f.priority
	if o.spec.AgentLabels, err = parseLabels(f.agentLabels); err != nil {
		return nil, err
	}
	o.spec.Repository = f.repository
	if o.spec.Repository == "" {
		o.spec.Repository = o.defaultRepository(lookupEnv)
	}
	if f.detach && (f.metadataFile != "" || f.iidFile != "") {
		return nil, &usageError{msg: "--metadata-file and --iidfile are written when the build ends, which --detach does not wait for"}
	}
	if f.timeout < 0 || f.timeout > maxBuildTimeout {
		return nil, &usageError{msg: fmt.Sprintf("invalid --timeout %s: want a duration above 0 and at most %s", f.timeout, maxBuildTimeout)}
	}
	if o.spec.Builder, err = parseBuilder(f.builder); err != nil {
		return nil, err
	}
	if o.secrets, err = parseSecrets(f.secrets, lookupEnv); err != nil {
		return nil, err
	}
	if len(o.secrets) > 0 && o.spec.Builder == kilnv1.Builder_BUILDER_CLASSIC {
		return nil, &usageError{msg: "--secret needs the BuildKit builder: drop --builder classic"}
	}
	if o.ssh, err = parseSSH(f.ssh, lookupEnv); err != nil {
		return nil, err
	}
	if len(o.ssh) > 0 && o.spec.Builder == kilnv1.Builder_BUILDER_CLASSIC {
		return nil, &usageError{msg: "--ssh needs the BuildKit builder: drop --builder classic"}
	}
	if o.spec.CacheFrom, o.spec.CacheTo, err = cacheopt.ParseAll(f.cacheFrom, f.cacheTo); err != nil {
		return nil, &usageError{msg: err.Error()}
	}
	return o, nil
}

// parseBuilder turns --builder into the spec's builder.
func parseBuilder(v string) (kilnv1.Builder, error) {
	switch strings.ToLower(v) {
	case "":
		return kilnv1.Builder_BUILDER_UNSPECIFIED, nil
	case "classic":
		return kilnv1.Builder_BUILDER_CLASSIC, nil
	case "buildkit":
		return kilnv1.Builder_BUILDER_BUILDKIT, nil
	}
	return 0, &usageError{msg: fmt.Sprintf("invalid --builder %q: want classic or buildkit", v)}
}

// flagOrEnv returns the flag's value if it was given, else the environment
// variable's.
func flagOrEnv(fset *pflag.FlagSet, flag, value, env string, lookupEnv func(string) (string, bool)) string {
	if fset.Changed(flag) {
		return value
	}
	if v, ok := lookupEnv(env); ok {
		return v
	}
	return value
}

// parseBuildArgValues turns --build-arg values into a map like docker:
// "K=V" sets K to V, "K" takes K from the environment and is dropped when
// the environment has no K.
func parseBuildArgValues(values []string, lookupEnv func(string) (string, bool)) (map[string]string, error) {
	if len(values) == 0 {
		return nil, nil
	}
	out := make(map[string]string, len(values))
	for _, kv := range values {
		k, v, hasValue := strings.Cut(kv, "=")
		if k == "" || strings.TrimSpace(k) != k {
			return nil, &usageError{msg: fmt.Sprintf("invalid --build-arg %q: want KEY=VALUE or KEY", kv)}
		}
		if !hasValue {
			env, ok := lookupEnv(k)
			if !ok {
				continue
			}
			v = env
		}
		out[k] = v
	}
	return out, nil
}

// secretWords make a build arg's name look like a secret's, as in buildx's
// SecretsUsedInArgOrEnv check.
var secretWords = []string{"PASSWORD", "TOKEN", "SECRET", "KEY"}

// secretLookingArgs returns the names among --build-arg values (KEY=VALUE
// or KEY) that hold PASSWORD, TOKEN, SECRET or KEY in any case, each once,
// in order. It never looks at the values.
func secretLookingArgs(values []string) []string {
	var names []string
	for _, kv := range values {
		name, _, _ := strings.Cut(kv, "=")
		upper := strings.ToUpper(name)
		if slices.Contains(names, name) || !slices.ContainsFunc(secretWords, func(w string) bool { return strings.Contains(upper, w) }) {
			continue
		}
		names = append(names, name)
	}
	return names
}

// parseLabels turns --label values into a map; each must be KEY=VALUE.
func parseLabels(values []string) (map[string]string, error) {
	if len(values) == 0 {
		return nil, nil
	}
	out := make(map[string]string, len(values))
	for _, kv := range values {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" || strings.TrimSpace(k) != k {
			return nil, &usageError{msg: fmt.Sprintf("invalid --label %q: want KEY=VALUE", kv)}
		}
		out[k] = v
	}
	return out, nil
}

// resolveDockerfile interprets -f as docker does: a relative path is
// taken from the current directory, and from the context directory when no
// file is there; "-" is standard input (the caller reads it). A Dockerfile
// outside the context is sent apart from it (kiln.PackContext).
func resolveDockerfile(contextDir, file string) (string, error) {
	switch {
	case file == "" || file == "-":
		return "", nil
	case filepath.IsAbs(file):
		return file, nil
	}
	fromCwd, err := filepath.Abs(file)
	if err != nil {
		return "", fmt.Errorf("resolving -f %s: %w", file, err)
	}
	if _, err := os.Stat(fromCwd); err != nil {
		return file, nil
	}
	return fromCwd, nil
}

func unwrapPathError(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// discard swallows pflag's own error output; errors are printed once, by Run.
type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// progressMode reads a --progress flag (value), falling back to
// KILN_PROGRESS, then to auto; quiet is the mode of --quiet.
func progressMode(fs *pflag.FlagSet, value string, quiet bool, lookupEnv func(string) (string, bool)) (progress.Mode, error) {
	mode := flagOrEnv(fs, "progress", value, "KILN_PROGRESS", lookupEnv)
	if quiet && !fs.Changed("progress") {
		mode = string(progress.Quiet)
	}
	if mode == "" {
		mode = string(progress.Auto)
	}
	m, err := progress.ParseMode(mode)
	if err != nil {
		return "", &usageError{msg: err.Error()}
	}
	return m, nil
}
