package tests

import (
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kilnbuild/kiln/agent/enginetest"
	"github.com/kilnbuild/kiln/services/bus"
)

// engineAgent is one agent of an engine farm: its name (also its label
// engine=<name>) and the engine URL it drives (kiln-agent --engine).
type engineAgent struct{ name, engine string }

// dockerAgent and buildkitAgent name an agent on a test engine.
func dockerAgent(e *enginetest.Engine) engineAgent {
	return engineAgent{e.Name, "docker://" + strings.TrimPrefix(e.Host, "unix://")}
}

func buildkitAgent(name string, bk *enginetest.BuildKitdInstance) engineAgent {
	return engineAgent{name, "buildkit://" + strings.TrimPrefix(bk.Addr, "unix://")}
}

// startEngineFarm is startFarm with agents on any engine URL and the
// gateway's extra flags (--cache-registry).
func startEngineFarm(t *testing.T, gatewayArgs []string, agents ...engineAgent) *farm {
	t.Helper()
	ns, err := bus.RunEmbedded(bus.EmbeddedOptions{Listen: "127.0.0.1:0", StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	url := ns.ClientURL()
	gw := startProc(t, gatewayBin, append([]string{"--nats-url", url, "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"}, gatewayArgs...)...)
	startProc(t, schedulerBin, "--nats-url", url, "--http-listen", "127.0.0.1:0")
	f := &farm{gateway: gw.addrs["grpc"], agents: map[string]*proc{}}
	for _, a := range agents {
		f.agents[a.name] = startProc(t, agentBin, "--nats-url", url, "--name", a.name, "--slots", "1",
			"--engine", a.engine, "--labels", "engine="+a.name, "--http-listen", "127.0.0.1:0", "--blob-cache-dir", t.TempDir())
	}
	return f
}

// cacheFiles is a context whose last COPY takes b.txt, the file a rebuild
// changes: of its five steps after FROM, the three before COPY b.txt can
// come from a cache.
func cacheFiles(base, n, b string) map[string]string {
	return map[string]string{
		"Dockerfile": "FROM " + base + "\n" +
			"RUN echo one-" + n + " > /one\n" +
			"COPY a.txt /a.txt\n" +
			"RUN cat /one /a.txt > /both\n" +
			"COPY b.txt /b.txt\n" +
			"RUN cat /b.txt\n",
		"a.txt": "a " + n + "\n",
		"b.txt": b + "\n",
	}
}

// cacheBuild builds cacheFiles through f with extra flags and returns its
// metadata and the CLI's output.
func cacheBuild(t *testing.T, f *farm, base, n, b string, extra ...string) (map[string]any, result) {
	t.Helper()
	meta := filepath.Join(t.TempDir(), "meta.json")
	args := append([]string{"build", "--progress", "plain", "--repository", "git.example/cache-" + n, "--metadata-file", meta}, extra...)
	r := kiln(t, f.gateway, append(args, writeContext(t, cacheFiles(base, n, b)))...)
	if r.code != 0 {
		t.Fatalf("build (b.txt %q): %s", b, r)
	}
	return metadata(t, meta), r
}

// wantWarm fails unless the three steps before the changed COPY came from
// a cache and the two from it ran.
func wantWarm(t *testing.T, what string, m map[string]any, r result) {
	t.Helper()
	if num(m, "kiln.cache.steps") != 5 || num(m, "kiln.cache.cached") != 3 {
		t.Fatalf("%s: %d of %d steps cached, want the 3 before COPY b.txt\n%s", what, num(m, "kiln.cache.cached"), num(m, "kiln.cache.steps"), r)
	}
}

// TestRegistryCacheWarmsAFreshBuildKitd: --cache-to type=registry,mode=max
// on one buildkitd (which pushes the image in the build), then
// --cache-from the same ref on a second, fresh one: every step before the
// changed one is cached.
func TestRegistryCacheWarmsAFreshBuildKitd(t *testing.T) {
	base := enginetest.BusyboxBase(t)
	bkA := enginetest.StartBuildKitd(t, enginetest.BuildKitdOptions{})
	bkB := enginetest.StartBuildKitd(t, enginetest.BuildKitdOptions{})
	f := startEngineFarm(t, nil, buildkitAgent("bk-a", bkA), buildkitAgent("bk-b", bkB))
	n := uniq()
	ref := enginetest.Registry(t) + "/kiln-test/regcache:" + n
	img := enginetest.Registry(t) + "/kiln-test/regcache-img:" + n
	m, r := cacheBuild(t, f, base, n, "b one", "--agent-label", "engine=bk-a", "-t", img, "--push", "--cache-to", "type=registry,ref="+ref+",mode=max")
	if str(m, "kiln.agent") != "bk-a" {
		t.Fatalf("first build ran on %s, want bk-a", str(m, "kiln.agent"))
	}
	// The buildkitd pushed the image in the build; the result says what
	// the registry holds.
	if got, want := str(m, "containerimage.digest"), enginetest.ManifestDigest(t, enginetest.Registry(t), "kiln-test/regcache-img", n); got != want {
		t.Fatalf("pushed digest %q, the registry holds %q\n%s", got, want, r)
	}
	mustContain(t, r.stdout+r.stderr, "exported cache to "+ref, "the build's registry cache export")
	m, r = cacheBuild(t, f, base, n, "b two", "--agent-label", "engine=bk-b", "-t", img, "--cache-from", ref)
	if str(m, "kiln.agent") != "bk-b" {
		t.Fatalf("second build ran on %s, want bk-b", str(m, "kiln.agent"))
	}
	wantWarm(t, "--cache-from on a fresh buildkitd", m, r)
}

// TestInlineCacheWarmsAFreshDockerEngine: --cache-to type=inline with a
// push on one Docker engine, then --cache-from the pushed image on a
// second, fresh one: the final stage's steps before the changed one are
// cached.
func TestInlineCacheWarmsAFreshDockerEngine(t *testing.T) {
	base := enginetest.BusyboxBase(t)
	engines := enginetest.StartEngines(t, "inl-a", "inl-b")
	f := startEngineFarm(t, nil, dockerAgent(engines[0]), dockerAgent(engines[1]))
	n := uniq()
	tag := enginetest.Registry(t) + "/kiln-test/inline:" + n
	cacheBuild(t, f, base, n, "b one", "--agent-label", "engine=inl-a", "--cache-to", "type=inline", "--push", "-t", tag)
	m, r := cacheBuild(t, f, base, n, "b two", "--agent-label", "engine=inl-b", "--cache-from", tag)
	if str(m, "kiln.agent") != "inl-b" {
		t.Fatalf("second build ran on %s, want inl-b", str(m, "kiln.agent"))
	}
	wantWarm(t, "--cache-from an inline-cached image on a fresh Docker engine", m, r)
}

// TestAutomaticWarmStart: with the gateway's --cache-registry, lineage L
// builds on one agent, which exports L's cache after the build's finish;
// that agent is drained, L's next build goes to the other, fresh one,
// which imports the cache and reuses every unchanged step.
// On Docker engines the export is inline (the image pushed as the ref);
// on buildkitds a registry cache, mode=max.
func TestAutomaticWarmStart(t *testing.T) {
	t.Run("docker", func(t *testing.T) {
		engines := enginetest.StartEngines(t, "warm-a", "warm-b")
		testAutomaticWarmStart(t, "", dockerAgent(engines[0]), dockerAgent(engines[1]))
	})
	t.Run("buildkit", func(t *testing.T) {
		bkA := enginetest.StartBuildKitd(t, enginetest.BuildKitdOptions{})
		bkB := enginetest.StartBuildKitd(t, enginetest.BuildKitdOptions{})
		testAutomaticWarmStart(t, "(mode=max)", buildkitAgent("warm-bk-a", bkA), buildkitAgent("warm-bk-b", bkB))
	})
}

func testAutomaticWarmStart(t *testing.T, exportMode string, agents ...engineAgent) {
	base := enginetest.BusyboxBase(t)
	n := uniq()
	prefix := enginetest.Registry(t) + "/kiln-test-warm-" + n
	f := startEngineFarm(t, []string{"--cache-registry", prefix}, agents...)

	m, r := cacheBuild(t, f, base, n, "b one")
	first, id := str(m, "kiln.agent"), str(m, "kiln.build.id")
	mustContain(t, r.stdout+r.stderr, "warning: automatic cache import from "+prefix, "the first build's warning that there is nothing to import yet")
	// The export comes after the finished event: a replay shows it.
	var logs result
	waitFor(t, 2*time.Minute, "the first build's automatic cache export in its log", func() bool {
		logs = kiln(t, f.gateway, "logs", id)
		return strings.Contains(logs.stdout+logs.stderr, "exported automatic cache to "+prefix)
	})
	if strings.Contains(logs.stdout+logs.stderr, "warning: automatic cache export") {
		t.Fatalf("the automatic export failed:\n%s", logs)
	}
	mustContain(t, logs.stdout+logs.stderr, exportMode, "the export's mode")

	if d := kiln(t, f.gateway, "agents", "drain", first); d.code != 0 {
		t.Fatalf("drain %s: %s", first, d)
	}
	m, r = cacheBuild(t, f, base, n, "b two")
	if str(m, "kiln.agent") == first {
		t.Fatalf("the second build ran on the drained agent %s", first)
	}
	mustContain(t, r.stdout+r.stderr, "#cache importing from "+prefix, "the second build's automatic import")
	wantWarm(t, "the lineage's next build on a fresh agent", m, r)
}

// TestUnreachableCacheRegistryOnlyWarns: a --cache-registry on a closed
// port gives the build a warning for its import and one for its export;
// the build succeeds.
func TestUnreachableCacheRegistryOnlyWarns(t *testing.T) {
	base := enginetest.BusyboxBase(t)
	engines := enginetest.StartEngines(t, "down-a")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().String()
	l.Close()
	prefix := closed + "/kiln-cache"
	f := startEngineFarm(t, []string{"--cache-registry", prefix}, dockerAgent(engines[0]))
	n := uniq()
	m, r := cacheBuild(t, f, base, n, "b")
	mustContain(t, r.stdout+r.stderr, "warning: automatic cache import from "+prefix, "the import's warning")
	id := str(m, "kiln.build.id")
	var logs result
	waitFor(t, 2*time.Minute, "the automatic export's warning in the build's log", func() bool {
		logs = kiln(t, f.gateway, "logs", id)
		return strings.Contains(logs.stdout+logs.stderr, "warning: automatic cache export to "+prefix)
	})
	if logs.code != 0 {
		t.Fatalf("kiln logs %s: %s", id, fmt.Sprint(logs))
	}
}
