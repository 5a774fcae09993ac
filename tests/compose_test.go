package tests

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kilnbuild/kiln/agent/enginetest"
)

// TestCompose runs the farm the way deploy/compose does, from images kiln
// built: scripts/images.sh builds the images compose.yaml runs on a local
// kilnd into the default engine (under a tag of this run's own, not
// pushed), then docker-compose brings the file up as a project of its own
// on free host ports — 3 NATS nodes with nkeys and R3 streams, 2 gateways
// behind a tenants file, 2 schedulers, 2 agents each with an engine
// container, a registry. A build with a RUN step goes through gateway-1 and
// is pushed to the compose registry, where its digest is read back; the
// same build through gateway-2 pushes the same image, and each NATS node
// holds all of kiln's streams with 3 replicas. Cleanup takes the project
// down with its volumes and removes the images.
func TestCompose(t *testing.T) {
	compose := composeCLI(t)
	base := enginetest.BusyboxBase(t) // in the default engine; pushed to the compose registry below
	repo, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	run := uniq()

	// The images, built by kiln itself.
	tag := "test-" + run
	prefix := "kiln-compose-test/"
	start := time.Now()
	want := []string{"kilnd", "kiln-gateway", "kiln-scheduler", "kiln-agent", "nats-server", "engine", "registry"} // what compose.yaml runs
	images := exec.Command(filepath.Join(repo, "scripts", "images.sh"), want...)
	images.Dir = repo
	images.Env = append(os.Environ(), "KILN_BIN_DIR="+filepath.Dir(kilnBin), "KILN_GATEWAY=",
		"KILN_IMAGE_PREFIX="+prefix, "KILN_IMAGE_TAG="+tag, "KILN_IMAGES_PUSH=0",
		"KILN_IMAGES_LOG_DIR="+t.TempDir())
	var imagesErr bytes.Buffer
	images.Stderr = &imagesErr
	refs, err := images.Output()
	built := strings.Fields(string(refs))
	t.Cleanup(func() {
		if len(built) > 0 {
			_ = exec.Command("docker", append([]string{"rmi"}, built...)...).Run()
		}
	})
	if err != nil {
		t.Fatalf("scripts/images.sh: %v\n%s", err, imagesErr.String())
	}
	if len(built) != len(want) {
		t.Fatalf("scripts/images.sh built %q, want %q\n%s", built, want, imagesErr.String())
	}
	t.Logf("images built by kiln in %s", time.Since(start).Round(time.Second))
	for _, ref := range built {
		out, err := exec.Command("docker", "image", "inspect", "--format", "{{.Config.User}}", ref).CombinedOutput()
		if err != nil {
			t.Fatalf("inspect %s: %v\n%s", ref, err, out)
		}
		user := strings.TrimSpace(string(out))
		if strings.HasSuffix(ref, "/engine:"+tag) {
			continue // an engine runs as root
		}
		if user != "65532:65532" {
			t.Errorf("%s runs as %q, want the nonroot user 65532:65532", ref, user)
		}
	}

	// A tenant whose token the build uses; the file holds its hash only,
	// readable by the gateways' user.
	dir := t.TempDir()
	tenants := filepath.Join(dir, "tenants.yaml")
	out, err := exec.Command(kilndBin, "tenants", "add", "compose", "--file", tenants, "--push", "registry:5000/*").Output()
	if err != nil {
		t.Fatalf("kilnd tenants add: %v", err)
	}
	token := strings.TrimSpace(string(out))
	if err := os.Chmod(tenants, 0o644); err != nil {
		t.Fatal(err)
	}

	ports := map[string]int{}
	env := append(os.Environ(), "KILN_IMAGE_PREFIX="+prefix, "KILN_IMAGE_TAG="+tag, "KILN_COMPOSE_TENANTS="+tenants)
	for _, name := range []string{"GATEWAY_1", "GATEWAY_1_HTTP", "GATEWAY_2", "GATEWAY_2_HTTP",
		"SCHEDULER_1_HTTP", "SCHEDULER_2_HTTP", "AGENT_1_HTTP", "AGENT_2_HTTP", "REGISTRY",
		"NATS_1_HTTP", "NATS_2_HTTP", "NATS_3_HTTP"} {
		ports[name] = composePort(t)
		env = append(env, fmt.Sprintf("KILN_COMPOSE_%s=%d", name, ports[name]))
	}
	project := "kilntest" + run
	dc := func(ctx context.Context, args ...string) ([]byte, error) {
		args = append([]string{"-f", filepath.Join(repo, "deploy", "compose", "compose.yaml"), "-p", project}, args...)
		cmd := exec.CommandContext(ctx, compose, args...)
		cmd.Env = env
		return cmd.CombinedOutput()
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		if t.Failed() {
			logs, _ := dc(ctx, "logs", "--no-color", "--tail", "40")
			t.Logf("compose logs:\n%s", logs)
		}
		if out, err := dc(ctx, "down", "-v", "--remove-orphans"); err != nil {
			t.Errorf("docker-compose down: %v\n%s", err, out)
		}
	})
	start = time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if out, err := dc(ctx, "up", "-d"); err != nil {
		t.Fatalf("docker-compose up: %v\n%s", err, out)
	}
	for _, name := range []string{"GATEWAY_1_HTTP", "GATEWAY_2_HTTP", "SCHEDULER_1_HTTP", "SCHEDULER_2_HTTP", "AGENT_1_HTTP", "AGENT_2_HTTP"} {
		url := fmt.Sprintf("http://127.0.0.1:%d/readyz", ports[name])
		waitFor(t, 3*time.Minute, url, func() bool { return composeGet(url, nil) == http.StatusOK })
	}
	t.Logf("compose farm ready in %s", time.Since(start).Round(time.Second))

	// The base image, in the compose registry as the engines name it.
	registry := fmt.Sprintf("127.0.0.1:%d", ports["REGISTRY"])
	waitFor(t, time.Minute, "the compose registry", func() bool { return composeGet("http://"+registry+"/v2/", nil) == http.StatusOK })
	local := registry + "/kiln-test/busybox:1"
	for _, args := range [][]string{{"tag", base, local}, {"push", local}, {"rmi", local}} {
		if out, err := exec.Command("docker", args...).CombinedOutput(); err != nil {
			t.Fatalf("docker %v: %v\n%s", args, err, out)
		}
	}

	// A build through gateway-1, with a RUN step on an agent's engine.
	bctx := writeContext(t, map[string]string{
		"Dockerfile": "FROM registry:5000/kiln-test/busybox:1\nRUN echo built-in-compose > /hello\nCOPY a.txt /a.txt\n",
		"a.txt":      run + "\n",
	})
	md := filepath.Join(dir, "metadata.json")
	gw1 := fmt.Sprintf("127.0.0.1:%d", ports["GATEWAY_1"])
	r := kiln(t, gw1, "build", "--token", token, "--progress", "plain", "-t", "registry:5000/compose/hello:"+run,
		"--push", "--metadata-file", md, bctx)
	if r.code != 0 {
		t.Fatalf("kiln build through gateway-1: %s", r)
	}
	m := metadata(t, md)
	digest := str(m, "containerimage.digest")
	if !strings.HasPrefix(digest, "sha256:") {
		t.Fatalf("metadata has no digest: %v", m)
	}
	if agent := str(m, "kiln.agent"); agent != "agent-1" && agent != "agent-2" {
		t.Fatalf("built on %q, want agent-1 or agent-2", agent)
	}
	var got string
	status := composeGet("http://"+registry+"/v2/compose/hello/manifests/"+run, func(h http.Header) {
		got = h.Get("Docker-Content-Digest")
	})
	if status != http.StatusOK || got != digest {
		t.Fatalf("registry has compose/hello:%s with status %d and digest %q, want 200 and %s", run, status, got, digest)
	}

	// The same through gateway-2.
	r = kiln(t, fmt.Sprintf("127.0.0.1:%d", ports["GATEWAY_2"]), "build", "--token", token, "--progress", "plain",
		"-t", "registry:5000/compose/hello:"+run+"-2", "--push", "--metadata-file", md, bctx)
	if r.code != 0 {
		t.Fatalf("kiln build through gateway-2: %s", r)
	}
	if d := str(metadata(t, md), "containerimage.digest"); d != digest {
		t.Errorf("the same build through gateway-2 pushed %s, want the first build's %s", d, digest)
	}

	// Every node of the NATS cluster holds a replica of every stream.
	for _, node := range []string{"NATS_1_HTTP", "NATS_2_HTTP", "NATS_3_HTTP"} {
		checkR3(t, fmt.Sprintf("http://127.0.0.1:%d/jsz?accounts=true&streams=true&config=true", ports[node]))
	}
}

// checkR3 reads a NATS server's /jsz and fails unless the JetStream cluster
// has 3 peers and the server holds kiln's streams, each with 3 replicas.
func checkR3(t *testing.T, url string) {
	t.Helper()
	var jsz struct {
		Meta *struct {
			Size int `json:"cluster_size"`
		} `json:"meta_cluster"`
		Accounts []struct {
			Streams []struct {
				Name   string `json:"name"`
				Config struct {
					Replicas int `json:"num_replicas"`
				} `json:"config"`
			} `json:"stream_detail"`
		} `json:"account_details"`
	}
	c := http.Client{Timeout: 10 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&jsz); err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	if jsz.Meta == nil || jsz.Meta.Size != 3 {
		t.Fatalf("%s: meta cluster %+v, want 3 peers", url, jsz.Meta)
	}
	streams := map[string]int{}
	for _, a := range jsz.Accounts {
		for _, s := range a.Streams {
			streams[s.Name] = s.Config.Replicas
		}
	}
	if _, ok := streams["KV_KILN_BUILDS"]; !ok {
		t.Fatalf("%s: no KV_KILN_BUILDS stream among %v", url, streams)
	}
	for name, n := range streams {
		if n != 3 {
			t.Errorf("%s: stream %s has %d replicas, want 3", url, name, n)
		}
	}
}

// composeCLI is the Compose CLI: docker-compose, installed from Debian's
// package when this is root on a machine with apt-get; the test skips only
// when it cannot be had.
func composeCLI(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("docker-compose"); err == nil {
		return p
	}
	if _, err := exec.LookPath("apt-get"); err != nil || os.Geteuid() != 0 {
		t.Fatal("docker-compose is not installed and cannot be (needs root and apt-get): apt-get install docker-compose")
	}
	cmd := exec.Command("apt-get", "install", "-y", "-qq", "--no-install-recommends", "docker-compose")
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("docker-compose is not installed and apt-get install docker-compose failed: %v\n%s", err, out)
	}
	p, err := exec.LookPath("docker-compose")
	if err != nil {
		t.Fatalf("apt-get installed docker-compose but it is not on PATH: %v", err)
	}
	return p
}

// composePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func composePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, port, _ := net.SplitHostPort(l.Addr().String())
	p, _ := strconv.Atoi(port)
	return p
}

// composeGet GETs url (a manifest as a Docker v2 schema 2 or OCI manifest)
// and returns the status, or 0 when it cannot be reached; header, if not
// nil, sees the response's headers.
func composeGet(url string, header func(http.Header)) int {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return 0
	}
	req.Header.Set("Accept", "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json")
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	if header != nil {
		header(resp.Header)
	}
	return resp.StatusCode
}
