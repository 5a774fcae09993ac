package tests

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kilnbuild/kiln/agent/enginetest"
	"github.com/kilnbuild/kiln/services/bus"
	"github.com/kilnbuild/kiln/services/sealed"
)

// Multi-platform builds (issue 15 item 1), on real engines: arm64 runs
// under Debian's qemu-user-static, registered with binfmt_misc by
// ensureQEMU; the base image is made for both platforms, FROM scratch,
// from Debian's busybox-static packages of each architecture by the farm
// itself (COPY busybox-${TARGETARCH}).

// devDebCache is where the Debian packages the tests need are kept between
// runs (KILN_DEV_DEB_CACHE overrides it).
func devDebCache() string {
	if d := os.Getenv("KILN_DEV_DEB_CACHE"); d != "" {
		return d
	}
	return "/var/cache/kiln-dev/debs"
}

// ensureQEMU makes sure this host runs linux/arm64 binaries: binfmt_misc
// mounted and Debian's qemu-aarch64 handler enabled.
func ensureQEMU(t *testing.T) {
	t.Helper()
	const dir = "/proc/sys/fs/binfmt_misc"
	if _, err := os.Stat(filepath.Join(dir, "status")); err != nil {
		if out, err := exec.Command("mount", "-t", "binfmt_misc", "binfmt_misc", dir).CombinedOutput(); err != nil {
			t.Fatalf("mount binfmt_misc (needs root, as make dev-env runs): %v\n%s", err, out)
		}
	}
	handler := filepath.Join(dir, "qemu-aarch64")
	if data, err := os.ReadFile(handler); err != nil || !strings.HasPrefix(string(data), "enabled") {
		out, err := exec.Command("update-binfmts", "--enable", "qemu-aarch64").CombinedOutput()
		if err != nil {
			t.Fatalf("register qemu-aarch64 with binfmt_misc: %v\n%s\ninstall qemu-user-static and binfmt-support (make dev-env)", err, out)
		}
	}
	if data, err := os.ReadFile(handler); err != nil || !strings.HasPrefix(string(data), "enabled") {
		t.Fatalf("qemu-aarch64 is not an enabled binfmt_misc handler (%v): install qemu-user-static and binfmt-support (make dev-env)", err)
	}
}

// busyboxStatic returns the path of Debian's static busybox for arch
// (amd64, arm64), downloading its package into devDebCache once.
func busyboxStatic(t *testing.T, arch string) string {
	t.Helper()
	cache := devDebCache()
	find := func() string {
		m, _ := filepath.Glob(filepath.Join(cache, "busybox-static_*_"+arch+".deb"))
		if len(m) == 0 {
			return ""
		}
		return m[0]
	}
	deb := find()
	if deb == "" {
		if err := os.MkdirAll(cache, 0o755); err != nil {
			t.Fatal(err)
		}
		script := "dpkg --add-architecture " + arch + " && apt-get update -q && apt-get download busybox-static:" + arch
		cmd := exec.Command("sh", "-c", script)
		cmd.Dir = cache
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("download busybox-static:%s into %s: %v\n%s", arch, cache, err, out)
		}
		if deb = find(); deb == "" {
			t.Fatalf("busybox-static:%s downloaded, but no %s/busybox-static_*_%s.deb", arch, cache, arch)
		}
	}
	dir := t.TempDir()
	if out, err := exec.Command("dpkg-deb", "-x", deb, dir).CombinedOutput(); err != nil {
		t.Fatalf("unpack %s: %v\n%s", deb, err, out)
	}
	return filepath.Join(dir, "bin", "busybox")
}

// platformFarm is a gateway, a scheduler and two agents (one slot each, on
// the default engine) as separate processes on one NATS server. The
// agents hold the farm's secrets key and the gateway its public key, so
// clients' registry credentials reach the agents sealed; the scheduler
// holds neither, nor any registry credential.
type platformFarm struct {
	gateway string
}

func startPlatformFarm(t *testing.T) *platformFarm {
	t.Helper()
	seeds, err := bus.LoadOrCreateSeeds(t.TempDir(), "platforms-a", "platforms-b")
	if err != nil {
		t.Fatal(err)
	}
	ns, err := bus.RunEmbedded(bus.EmbeddedOptions{Listen: "127.0.0.1:0", StoreDir: t.TempDir(), Identities: seeds.Identities})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	t.Setenv("KILN_NATS_URL", ns.ClientURL())
	key := filepath.Join(t.TempDir(), "secrets.key")
	if _, err := sealed.LoadOrCreatePrivateKey(key); err != nil {
		t.Fatal(err)
	}
	gw := startProc(t, gatewayBin, "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
		"--nats-nkey-file", seeds.File(bus.RoleGateway, ""), "--secrets-key-file", key)
	startProc(t, schedulerBin, "--http-listen", "127.0.0.1:0", "--nats-nkey-file", seeds.File(bus.RoleScheduler, ""))
	for _, name := range []string{"platforms-a", "platforms-b"} {
		startProc(t, agentBin, "--name", name, "--slots", "1", "--http-listen", "127.0.0.1:0", "--blob-cache-dir", t.TempDir(),
			"--nats-nkey-file", seeds.File(bus.RoleAgent, name), "--secrets-key-file", key)
	}
	f := &platformFarm{gateway: gw.addrs["grpc"]}
	// Both agents, before any build: the children may then run apart.
	waitFor(t, time.Minute, "two ready agents advertising linux/arm64", func() bool {
		r := kiln(t, f.gateway, "agents", "--format", "json")
		return strings.Count(r.stdout, "AGENT_STATE_READY") == 2 && strings.Count(r.stdout, "linux/arm64") == 2
	})
	return f
}

// registryIndex reads repo:tag from the dev registry and returns its media
// type and its manifests' platforms ("linux/arm64").
func registryIndex(t *testing.T, repo, tag string) (mediaType string, platforms []string) {
	t.Helper()
	mediaType, platforms, _ = registryIndexAt(t, "127.0.0.1:5000", nil, repo, tag)
	return mediaType, platforms
}

// registryIndexAt is registryIndex for registry reg, with basic auth
// (user, password) unless auth is nil; it returns the index's digest too.
func registryIndexAt(t *testing.T, reg string, auth []string, repo, tag string) (mediaType string, platforms []string, digest string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, "http://"+reg+"/v2/"+repo+"/manifests/"+tag, nil)
	if err != nil {
		t.Fatal(err)
	}
	if auth != nil {
		req.SetBasicAuth(auth[0], auth[1])
	}
	req.Header.Set("Accept", "application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.index.v1+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var idx struct {
		MediaType string `json:"mediaType"`
		Manifests []struct {
			Platform struct{ OS, Architecture, Variant string } `json:"platform"`
		} `json:"manifests"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&idx); err != nil {
		t.Fatalf("%s:%s: %s: %v", repo, tag, resp.Status, err)
	}
	for _, m := range idx.Manifests {
		platforms = append(platforms, m.Platform.OS+"/"+m.Platform.Architecture)
	}
	slices.Sort(platforms)
	return idx.MediaType, platforms, resp.Header.Get("Docker-Content-Digest")
}

// buildBase builds the two-platform busybox base with the farm and returns
// its reference.
func (f *platformFarm) buildBase(t *testing.T) string {
	t.Helper()
	dir := writeContext(t, map[string]string{"Dockerfile": "FROM scratch\nARG TARGETARCH\nCOPY busybox-${TARGETARCH} /bin/busybox\n" +
		"SHELL [\"/bin/busybox\", \"sh\", \"-c\"]\nRUN /bin/busybox --install -s /bin\n"})
	for _, arch := range []string{"amd64", "arm64"} {
		data, err := os.ReadFile(busyboxStatic(t, arch))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "busybox-"+arch), data, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	repo := "kiln-test/platforms-base-" + uniq()
	ref := "127.0.0.1:5000/" + repo + ":1"
	if r := kiln(t, f.gateway, "build", "--progress", "plain", "--platform", "linux/amd64,linux/arm64", "-t", ref, "--push", dir); r.code != 0 {
		t.Fatalf("build the two-platform base: %s", r)
	}
	if _, ps := registryIndex(t, repo, "1"); !slices.Equal(ps, []string{"linux/amd64", "linux/arm64"}) {
		t.Fatalf("base %s is for %v, want linux/amd64 and linux/arm64", ref, ps)
	}
	return ref
}

// runOn runs cmd in ref for platform with the default engine.
func runOn(t *testing.T, ref, platform string, cmd ...string) string {
	t.Helper()
	out, err := exec.Command("docker", append([]string{"run", "--rm", "--pull", "always", "--platform", platform, ref}, cmd...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("docker run --platform %s %s %v: %v\n%s", platform, ref, cmd, err, out)
	}
	return strings.TrimSpace(string(out[bytesAfterPull(out):]))
}

// bytesAfterPull skips the pull progress docker run --pull always prints
// before the container's output: the lines up to "Status: …".
func bytesAfterPull(out []byte) int {
	s := string(out)
	if i := strings.LastIndex(s, "Status: "); i >= 0 {
		if j := strings.IndexByte(s[i:], '\n'); j >= 0 {
			return i + j + 1
		}
	}
	return 0
}

// childRecords returns a parent's children's records, by platform.
func childRecords(t *testing.T, gateway string, parent map[string]any) map[string]map[string]any {
	t.Helper()
	ids, _ := parent["children"].([]any)
	out := map[string]map[string]any{}
	for _, id := range ids {
		rec := inspectBuild(t, gateway, id.(string))
		spec, _ := rec["spec"].(map[string]any)
		ps, _ := spec["platforms"].([]any)
		if len(ps) != 1 || rec["parentId"] != parent["id"] {
			t.Fatalf("child %s: platforms %v, parent %v; want one platform, parent %v", id, ps, rec["parentId"], parent["id"])
		}
		out[ps[0].(string)] = rec
	}
	if len(out) != 2 {
		t.Fatalf("build %v has children for %v, want linux/amd64 and linux/arm64", parent["id"], out)
	}
	return out
}

func timeOf(t *testing.T, rec map[string]any, key string) time.Time {
	t.Helper()
	s, _ := rec[key].(string)
	at, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatalf("build %v: %s %q: %v", rec["id"], key, s, err)
	}
	return at
}

// TestPlatformsBuild: a two-platform build is one build with a child per
// platform, built in parallel on the two agents, pushed as one index whose
// digest is the build's; each platform's image runs and saw buildx's
// TARGET*/BUILDPLATFORM values; a failing platform fails the build naming
// it; cancelling the build cancels both children.
func TestPlatformsBuild(t *testing.T) {
	ensureQEMU(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	f := startPlatformFarm(t)
	base := f.buildBase(t)

	t.Run("index", func(t *testing.T) {
		// Pushed to a registry that needs a password, which only the
		// client has: it travels sealed with the build, and the index is
		// written by an agent, with it (the scheduler has none).
		const user = "kiln-platforms"
		password := "pw-" + uniq() + uniq()
		reg := enginetest.AuthRegistry(t, user, password)
		enginetest.UseDockerConfig(t, map[string][2]string{reg: {user, password}}) // the CLI's and docker run's
		// The loop makes each child run for a while, so that the two
		// children's runs overlap when they run in parallel.
		dir := writeContext(t, map[string]string{"Dockerfile": "FROM " + base + "\nARG TARGETPLATFORM TARGETOS TARGETARCH BUILDPLATFORM\n" +
			"RUN i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; echo \"$TARGETPLATFORM $TARGETOS $TARGETARCH $BUILDPLATFORM $(uname -m)\" > /platform.txt\n# " + uniq() + "\n"})
		repo := "kiln-test/platforms-app-" + uniq()
		ref := reg + "/" + repo + ":1"
		meta := filepath.Join(t.TempDir(), "meta.json")
		r := kiln(t, f.gateway, "build", "--progress", "plain", "--metadata-file", meta, "--platform", "linux/amd64,linux/arm64", "-t", ref, "--push", dir)
		if r.code != 0 {
			t.Fatalf("two-platform build: %s", r)
		}
		mustContain(t, r.stderr, "linux/arm64 (", "the children's events in the build's output")
		// Each child's steps, labelled with its platform as buildx does,
		// and a line per platform's image and the index's.
		for _, p := range []string{"linux/amd64", "linux/arm64"} {
			if !regexp.MustCompile(`(?m)^#\d+ \[` + p + ` 2/2\] RUN i=0`).MatchString(r.stderr) {
				t.Errorf("no %s step line (#N [%s 2/2] RUN …) in the build's output:\n%s", p, p, r.stderr)
			}
			mustContain(t, r.stderr, "kiln: "+p+" image sha256:", "the summary's "+p+" image")
		}
		mt, ps, digest := registryIndexAt(t, reg, []string{user, password}, repo, "1")
		if !strings.Contains(mt, "manifest.list") && !strings.Contains(mt, "image.index") || !slices.Equal(ps, []string{"linux/amd64", "linux/arm64"}) {
			t.Fatalf("registry holds %s for %v, want an index of linux/amd64 and linux/arm64", mt, ps)
		}
		mustContain(t, r.stderr, "kiln: image index "+digest+" of linux/amd64, linux/arm64", "the summary's index")
		if got := str(metadata(t, meta), "containerimage.digest"); got != digest {
			t.Errorf("containerimage.digest %q, want the index's %q", got, digest)
		}
		for platform, want := range map[string]string{
			"linux/amd64": "linux/amd64 linux amd64 linux/amd64 x86_64",
			"linux/arm64": "linux/arm64 linux arm64 linux/amd64 aarch64",
		} {
			if got := runOn(t, ref, platform, "cat", "/platform.txt"); got != want {
				t.Errorf("%s image's /platform.txt %q, want %q", platform, got, want)
			}
			if got, wantArch := runOn(t, ref, platform, "uname", "-m"), strings.Fields(want)[4]; got != wantArch {
				t.Errorf("%s image runs as %q, want %q", platform, got, wantArch)
			}
		}
		parent := inspectBuild(t, f.gateway, buildIDOf(t, strings.Split(r.stderr, "\n")))
		if a := fmt.Sprint(parent["agent"]); a != "platforms-a" && a != "platforms-b" {
			t.Errorf("the index was written by %q, want one of the agents", a)
		}
		// kiln logs replays the children's logs with the build's.
		logs := kiln(t, f.gateway, "logs", fmt.Sprint(parent["id"]))
		for _, p := range []string{"linux/amd64", "linux/arm64"} {
			if !regexp.MustCompile(`(?m)^#\d+ \[` + p + ` 2/2\] RUN i=0`).MatchString(logs.stderr) {
				t.Errorf("kiln logs %v: no %s step line:\n%s", parent["id"], p, logs)
			}
		}
		kids := childRecords(t, f.gateway, parent)
		amd, arm := kids["linux/amd64"], kids["linux/arm64"]
		if amd["agent"] == arm["agent"] {
			t.Errorf("both children ran on %v, want one on each agent", amd["agent"])
		}
		if !timeOf(t, amd, "startedAt").Before(timeOf(t, arm, "finishedAt")) || !timeOf(t, arm, "startedAt").Before(timeOf(t, amd, "finishedAt")) {
			t.Errorf("children did not run in parallel: amd64 %v–%v, arm64 %v–%v", amd["startedAt"], amd["finishedAt"], arm["startedAt"], arm["finishedAt"])
		}
	})

	t.Run("single platform", func(t *testing.T) {
		// One platform is no parent: the build itself is for linux/arm64,
		// routed to an agent that builds it (here emulated).
		dir := writeContext(t, map[string]string{"Dockerfile": "FROM " + base + "\nARG TARGETPLATFORM\nRUN echo \"$TARGETPLATFORM $(uname -m)\" > /platform.txt # " + uniq() + "\n"})
		repo := "kiln-test/platforms-one-" + uniq()
		ref := "127.0.0.1:5000/" + repo + ":1"
		r := kiln(t, f.gateway, "build", "--progress", "plain", "--platform", "linux/arm64", "-t", ref, "--push", dir)
		if r.code != 0 {
			t.Fatalf("linux/arm64 build: %s", r)
		}
		rec := inspectBuild(t, f.gateway, buildIDOf(t, strings.Split(r.stderr, "\n")))
		if rec["children"] != nil {
			t.Errorf("a one-platform build has children %v", rec["children"])
		}
		if got := runOn(t, ref, "linux/arm64", "cat", "/platform.txt"); got != "linux/arm64 aarch64" {
			t.Errorf("/platform.txt %q, want \"linux/arm64 aarch64\"", got)
		}
	})

	t.Run("failing platform", func(t *testing.T) {
		dir := writeContext(t, map[string]string{"Dockerfile": "FROM " + base + "\nRUN [ \"$(uname -m)\" != aarch64 ] # " + uniq() + "\n"})
		ref := "127.0.0.1:5000/kiln-test/platforms-fail-" + uniq() + ":1"
		r := kiln(t, f.gateway, "build", "--progress", "plain", "--platform", "linux/amd64,linux/arm64", "-t", ref, "--push", dir)
		if r.code == 0 {
			t.Fatalf("a build whose arm64 step fails succeeded: %s", r)
		}
		mustContain(t, r.stderr, "platform linux/arm64 failed", "the build's error")
		parent := inspectBuild(t, f.gateway, buildIDOf(t, strings.Split(r.stderr, "\n")))
		if parent["state"] != "BUILD_STATE_FAILED" || !strings.Contains(fmt.Sprint(parent["error"]), "linux/arm64") {
			t.Fatalf("parent %v: %v, want FAILED naming linux/arm64", parent["state"], parent["error"])
		}
	})

	t.Run("cancel", func(t *testing.T) {
		// The step runs until cancelled (its pace is the workload's).
		dir := writeContext(t, map[string]string{"Dockerfile": "FROM " + base + "\nRUN i=0; while [ $i -lt 600 ]; do echo tick-$i; sleep 1; i=$((i+1)); done # " + uniq() + "\n"})
		ref := "127.0.0.1:5000/kiln-test/platforms-cancel-" + uniq() + ":1"
		p := startKiln(t, ctx, f.gateway, "build", "--progress", "plain", "--platform", "linux/amd64,linux/arm64", "-t", ref, "--push", dir)
		p.waitPrinted(t, ctx, 3*time.Minute, regexp.MustCompile(`queued`))
		id := buildIDOf(t, p.stderrLines())
		var kids map[string]map[string]any
		if _, err := waitUntil(ctx, 3*time.Minute, "both children running", func() bool {
			parent := inspectBuild(t, f.gateway, id)
			if ids, _ := parent["children"].([]any); len(ids) != 2 {
				return false
			}
			kids = childRecords(t, f.gateway, parent)
			return kids["linux/amd64"]["state"] == "BUILD_STATE_RUNNING" && kids["linux/arm64"]["state"] == "BUILD_STATE_RUNNING"
		}); err != nil {
			t.Fatal(err)
		}
		if r := kiln(t, f.gateway, "cancel", id); r.code != 0 {
			t.Fatalf("kiln cancel %s: %s", id, r)
		}
		waitState(t, ctx, f.gateway, id, "BUILD_STATE_CANCELLED")
		for platform, k := range kids {
			if rec := waitState(t, ctx, f.gateway, k["id"].(string), "BUILD_STATE_CANCELLED"); rec["state"] != "BUILD_STATE_CANCELLED" {
				t.Errorf("%s child %v", platform, rec["state"])
			}
		}
		if r := p.wait(t, ctx); r.code == 0 {
			t.Errorf("kiln build of a cancelled build exited 0: %s", r)
		}
	})
}
