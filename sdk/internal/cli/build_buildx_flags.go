package cli

import (
	"fmt"
	"strings"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules/buildflags"
	"github.com/kilnbuild/kiln/proto/rules/outputs"
	"github.com/kilnbuild/kiln/proto/rules/platforms"
	"github.com/spf13/pflag"
)

// runFlags holds the raw values of the flags that shape RUN steps.
type runFlags struct {
	network   string
	addHosts  []string
	shmSize   string
	ulimits   []string
	platforms []string               // --platform values, each possibly a comma-separated list
	outputs   []string               // --output values
	buildx    map[string]*buildxFlag // the other buildx flags, by name
	buildxSet []string               // their names in buildxFlags' order
	output    outputs.Plan           // --output's, set by apply
}

// register adds --network, --add-host, --shm-size, --ulimit, --platform
// and --output.
func (f *runFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.network, "network", "", `Network mode for the RUN steps: "default", "none" or "host" (host only where the farm's policy allows it)`)
	fs.StringArrayVar(&f.addHosts, "add-host", nil, `Add a custom host-to-IP mapping for the RUN steps (format: "host:ip"); repeatable`)
	fs.StringVar(&f.shmSize, "shm-size", "", `Size of /dev/shm for the RUN steps (e.g. 128m)`)
	fs.StringArrayVar(&f.ulimits, "ulimit", nil, `Ulimit for the RUN steps (format: "name=soft[:hard]", e.g. nofile=1024:2048); repeatable`)
	fs.StringArrayVar(&f.platforms, "platform", nil, `Target platforms (e.g. linux/amd64,linux/arm64): one is built by an agent that runs it (natively preferred), several are built in parallel and pushed as one image index; repeatable`)
	fs.StringArrayVarP(&f.outputs, "output", "o", nil, `Output destination besides the registry (format: "type=local,dest=DIR" or DIR, "type=tar,dest=FILE|-" or -, "type=oci|docker,dest=FILE|-", "type=cacheonly"; "type=registry" is --push): downloaded from the farm once the build succeeded`)
}

// apply parses the flags into spec with proto/rules/buildflags.
func (f *runFlags) apply(spec *kilnv1.BuildSpec) error {
	var err error
	if err := f.applyOutput(f.outputs, spec); err != nil {
		return err
	}
	if spec.Network, err = buildflags.ParseNetwork(f.network); err != nil {
		return &usageError{msg: "--network: " + err.Error()}
	}
	for _, v := range f.addHosts {
		h, err := buildflags.ParseExtraHost(v)
		if err != nil {
			return &usageError{msg: err.Error()}
		}
		spec.ExtraHosts = append(spec.ExtraHosts, h)
	}
	if f.shmSize != "" {
		if spec.ShmSizeBytes, err = buildflags.ParseSize(f.shmSize); err != nil {
			return &usageError{msg: "--shm-size: " + err.Error()}
		}
	}
	if spec.Platforms, err = platforms.Parse(f.platforms); err != nil {
		return &usageError{msg: "--platform: " + err.Error()}
	}
	at := map[string]int{}
	for _, v := range f.ulimits {
		u, err := buildflags.ParseUlimit(v)
		if err != nil {
			return &usageError{msg: err.Error()}
		}
		if i, ok := at[u.Name]; ok { // docker keeps the last of a name
			spec.Ulimits[i] = u
			continue
		}
		at[u.Name] = len(spec.Ulimits)
		spec.Ulimits = append(spec.Ulimits, u)
	}
	return nil
}

// buildxFlag is a `docker buildx build` (or legacy `docker build`) flag
// that kiln recognises without honouring it as buildx does, so that a
// pipeline passing it is told why, never "unknown flag".
type buildxFlag struct {
	name, short string
	// bool flags take no value; the others take one, repeatable.
	isBool bool
	// check says what to do with the flag's values: "" accepts them (the
	// flag asks for what kiln does anyway), a message refuses the build.
	check  func(values []string) string
	values []string
	set    bool
}

// buildxFlags are the flags of `docker buildx build` and `docker build`
// that kiln takes only to explain itself. Flags kiln honours (--tag,
// --file, --build-arg, --network, --secret, ...) are ordinary flags.
func buildxFlags() []*buildxFlag {
	refuse := func(msg string) func([]string) string { return func([]string) string { return msg } }
	accept := func([]string) string { return "" }
	return []*buildxFlag{
		{name: "load", isBool: true, check: refuse(loadRefusal)},
		{name: "print", check: refuse("--print is not supported (buildx deprecated it for --call): kiln runs the build only")},
		{name: "allow", check: checkAllow},
		{name: "cgroup-parent", check: refuse(
			"--cgroup-parent is not supported: the agent's engine places build steps in its own cgroups; ask the farm's operator for resource limits")},
		{name: "no-cache-filter", check: refuse("--no-cache-filter is not supported yet: use --no-cache to rebuild every stage")},
		{name: "policy", check: refuse("--policy is not supported: the farm applies its own build policy per tenant")},
		{name: "rm", isBool: true, check: accept},       // docker build: kiln always removes intermediate containers
		{name: "force-rm", isBool: true, check: accept}, // likewise
		{name: "compress", isBool: true, check: accept}, // kiln moves the context through its content store
		{name: "disable-content-trust", isBool: true, check: accept},
		{name: "squash", isBool: true, check: refuse("--squash is not supported (BuildKit does not take it): use a multi-stage build and COPY --from the result")},
		{name: "isolation", check: refuse("--isolation is not supported: the farm's engines run Linux steps with their default isolation")},
		{name: "security-opt", check: refuse("--security-opt is not supported: the farm's engines apply their own security profile; RUN --security=insecure needs the tenant's allow_insecure")},
		{name: "memory", short: "m", check: refuse("--memory is not supported: the agent's engine sets build steps' memory; ask the farm's operator for limits")},
		{name: "memory-swap", check: refuse("--memory-swap is not supported: the agent's engine sets build steps' memory")},
		{name: "cpu-shares", check: refuse("--cpu-shares is not supported: the agent's engine shares its CPUs between builds")},
		{name: "cpu-period", check: refuse("--cpu-period is not supported: the agent's engine shares its CPUs between builds")},
		{name: "cpu-quota", check: refuse("--cpu-quota is not supported: the agent's engine shares its CPUs between builds")},
		{name: "cpuset-cpus", check: refuse("--cpuset-cpus is not supported: the agent's engine shares its CPUs between builds")},
		{name: "cpuset-mems", check: refuse("--cpuset-mems is not supported: the agent's engine shares its memory nodes between builds")},
	}
}

// registerBuildx adds the buildx flags, hidden from kiln build's usage (the
// README lists them).
func (f *runFlags) registerBuildx(fs *pflag.FlagSet) {
	f.buildx = map[string]*buildxFlag{}
	for _, b := range buildxFlags() {
		f.buildx[b.name] = b
		f.buildxSet = append(f.buildxSet, b.name)
		if b.isBool {
			fs.BoolP(b.name, b.short, false, "buildx compatibility")
		} else {
			fs.StringArrayP(b.name, b.short, nil, "buildx compatibility")
		}
		_ = fs.MarkHidden(b.name)
	}
}

// checkBuildx refuses a build given a buildx flag kiln does not honour,
// naming the first. warn receives the accepted flags' notes.
func (f *runFlags) checkBuildx(fs *pflag.FlagSet, spec *kilnv1.BuildSpec, warn func(string)) error {
	for _, name := range f.buildxSet {
		fl := fs.Lookup(name)
		if !fl.Changed {
			continue
		}
		b := f.buildx[name]
		var values []string
		if b.isBool {
			if v, _ := fs.GetBool(name); !v {
				continue
			}
		} else {
			values, _ = fs.GetStringArray(name)
		}
		if msg := b.check(values); msg != "" {
			return &usageError{msg: msg}
		}
		if name == "allow" {
			warn("--allow is taken as given: the farm grants network.host and security.insecure by the tenant's policy (allow_network_host, allow_insecure), whatever the flag says")
		}
	}
	return nil
}

// checkAllow accepts the entitlements the tenant's policy decides.
func checkAllow(values []string) string {
	for _, v := range values {
		for _, e := range strings.Split(v, ",") {
			switch strings.TrimSpace(e) {
			case "network.host", "security.insecure":
				continue
			}
			return fmt.Sprintf("--allow %s is not supported: the farm grants only network.host and security.insecure, by the tenant's policy", e)
		}
	}
	return ""
}
