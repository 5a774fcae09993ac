package tests

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
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
)

// compatCase is one build context the compatibility suite builds both
// ways: with BuildKit's own client (buildctl, as docker buildx sends a
// context) and with kiln, on the same engine, comparing the images.
type compatCase struct {
	name string
	// files are the context's files (see writeCompatContext); the
	// Dockerfile's %[1]s is the base image.
	files map[string]string
	// setup adds what files cannot say (archives, hard links, sockets).
	setup func(t *testing.T, dir string)
	// fails: both builds must fail (a failing step, a syntax error).
	fails bool
	// kilnArgs are extra kiln build arguments (the Dockerfile's name).
	kilnArgs []string
	// dockerfile is the Dockerfile's name for buildctl ("Dockerfile").
	dockerfile string
	// outside is a Dockerfile outside the context: both builds get it as
	// -f names it (buildctl: its own local directory).
	outside string
}

const copyAll = "FROM %[1]s\nCOPY . /ctx\n"

func compatCases() []compatCase {
	return []compatCase{
		{name: "multi-stage by name and index", files: map[string]string{"Dockerfile": "FROM %[1]s AS build\nRUN echo built > /a && chmod 0600 /a\nFROM %[1]s AS other\nRUN echo other > /o\nFROM %[1]s\nCOPY --from=build /a /a\nCOPY --from=1 /o /o\n"}},
		{name: "ARG before FROM", files: map[string]string{"Dockerfile": "ARG BASE=%[1]s\nARG V=outer\nFROM ${BASE}\nARG V\nARG W=inner\nRUN echo \"$V $W\" > /v\nENV E=$W\n"}},
		{name: "COPY --chown --chmod", files: map[string]string{"Dockerfile": "FROM %[1]s\nCOPY --chown=1000:1000 f /f\nCOPY --chmod=0640 f /g\nCOPY --chown=7:8 --chmod=755 d /d\n", "f": "f\n", "d/x": "x\n", "d/y/z": "z\n"}},
		{name: "ADD local archive", files: map[string]string{"Dockerfile": "FROM %[1]s\nADD a.tar.gz /unpacked/\nADD a.tar.gz /again\nADD plain.txt /plain.txt\n", "plain.txt": "plain\n"}, setup: writeArchive},
		{name: ".dockerignore negations and **", files: map[string]string{"Dockerfile": copyAll,
			".dockerignore": "**/*.log\n!keep/**/*.log\nsecret*\n**/tmp\nbuild/\n!build/keep.txt\n",
			"a.log":         "", "src/b.log": "", "keep/x/c.log": "", "secret.txt": "", "src/secret.txt": "", "src/tmp/t": "", "tmp/u": "",
			"build/out": "", "build/keep.txt": "", "src/main.c": "int main;\n"}},
		{name: "symlinks", files: map[string]string{"Dockerfile": copyAll, "target.txt": "t\n", "rel": "->target.txt", "abs": "->/etc/passwd",
			"dangling": "->nowhere", "dir/up": "->../target.txt", "dirlink": "->dir"}},
		{name: "special file names", files: map[string]string{"Dockerfile": copyAll, "with space.txt": "s", "ünïcødé.txt": "u", "-dash": "d",
			"#hash": "h", "a=b,c": "e", "[brackets]": "b", "back'tick`": "q", "dir with space/f": "f"}},
		{name: "ONBUILD HEALTHCHECK SHELL STOPSIGNAL VOLUME", files: map[string]string{"Dockerfile": "FROM %[1]s\nONBUILD RUN echo child\n" +
			"HEALTHCHECK --interval=5s --timeout=3s --retries=2 CMD [\"true\"]\nSHELL [\"/bin/sh\", \"-ec\"]\nRUN echo shell > /s\n" +
			"STOPSIGNAL SIGQUIT\nVOLUME [\"/data\", \"/logs\"]\nEXPOSE 8080/tcp 53/udp\nUSER 1000:1000\nWORKDIR /app\nLABEL a=b\nENTRYPOINT [\"/bin/sh\"]\nCMD [\"-c\", \"true\"]\n"}},
		{name: "file modes", files: map[string]string{"Dockerfile": copyAll, "exec.sh": "#!/bin/sh\n", "ro": "r", "empty/": ""}, setup: func(t *testing.T, dir string) {
			chmod(t, filepath.Join(dir, "exec.sh"), 0o755)
			chmod(t, filepath.Join(dir, "ro"), 0o400)
			chmod(t, filepath.Join(dir, "empty"), 0o700)
		}},
		{name: "hard links", files: map[string]string{"Dockerfile": copyAll, "orig": "linked content\n"}, setup: func(t *testing.T, dir string) {
			if err := os.Link(filepath.Join(dir, "orig"), filepath.Join(dir, "link")); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "unix socket", files: map[string]string{"Dockerfile": copyAll, "f": "f"}, setup: func(t *testing.T, dir string) {
			l, err := net.Listen("unix", filepath.Join(dir, "sock"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { l.Close() })
		}},
		{name: "lowercase dockerfile", files: map[string]string{"dockerfile": "FROM %[1]s\nRUN echo lower > /l\n"}, dockerfile: "dockerfile"},
		{name: "symlinked Dockerfile", files: map[string]string{"Dockerfile": "->build/app.Dockerfile", "build/app.Dockerfile": "FROM %[1]s\nRUN echo linked > /l\n"},
			dockerfile: "build/app.Dockerfile"},
		{name: "Dockerfile outside the context", files: map[string]string{"f": "f\n"}, outside: "FROM %[1]s\nCOPY f /f\nRUN echo outside > /o\n"},
		{name: "failing step", files: map[string]string{"Dockerfile": "FROM %[1]s\nRUN echo before && exit 3\n"}, fails: true},
		{name: "syntax error", files: map[string]string{"Dockerfile": "FROM %[1]s\nFROMM nothing\n"}, fails: true},
	}
}

// TestCompatBuildKit builds every compatCase with buildctl (BuildKit's
// client, sending the context as docker buildx does) and with kiln on one
// standalone buildkitd, both pushing to the test registry, and compares
// the two images: each layer's files (names, types, modes, owners, link
// targets, content) and the config (everything but times), history
// included. Where buildctl fails, kiln must fail too.
func TestCompatBuildKit(t *testing.T) {
	bk := enginetest.StartBuildKitd(t, enginetest.BuildKitdOptions{})
	k := startKilndOnBuildKitd(t, bk, "buildkit://"+strings.TrimPrefix(bk.Addr, "unix://"))
	runCompat(t, k, "buildctl", nil, func(ctx context.Context, dir, dockerfile, ref string) ([]byte, error) {
		return exec.CommandContext(ctx, bk.Buildctl, "--addr", bk.Addr, "build", "--frontend", "dockerfile.v0",
			"--local", "context="+dir, "--local", "dockerfile="+filepath.Dir(dockerfile), "--opt", "filename="+filepath.Base(dockerfile),
			"--output", "type=image,name="+ref+",push=true").CombinedOutput()
	})
}

// TestCompatDockerClassic builds every compatCase with the docker CLI's
// classic builder (the docker CLI here has no buildx) and with kiln's
// --builder classic on the test's Docker engine, and compares the images
// as TestCompatBuildKit does.
func TestCompatDockerClassic(t *testing.T) {
	k := sharedKilnd(t)
	runCompat(t, k, "docker", []string{"--builder", "classic"}, func(ctx context.Context, dir, dockerfile, ref string) ([]byte, error) {
		cmd := exec.CommandContext(ctx, "docker", "build", "-f", dockerfile, "-t", ref, dir)
		cmd.Env = append(os.Environ(), "DOCKER_BUILDKIT=0")
		out, err := cmd.CombinedOutput()
		if err != nil {
			return out, err
		}
		push, err := exec.CommandContext(ctx, "docker", "push", ref).CombinedOutput()
		return append(out, push...), err
	})
}

// runCompat builds each compatCase with reference (which builds dir with
// dockerfile and pushes ref) and with kiln on k, with kilnArgs.
func runCompat(t *testing.T, k *kilnd, refName string, kilnArgs []string, reference func(ctx context.Context, dir, dockerfile, ref string) ([]byte, error)) {
	reg := enginetest.Registry(t)
	base := enginetest.BusyboxBase(t)
	for i, c := range compatCases() {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			writeCompatContext(t, dir, c.files, base)
			if c.setup != nil {
				c.setup(t, dir)
			}
			repo := fmt.Sprintf("kiln-compat/%s%d", refName, i)
			tag := uniq()
			df := c.dockerfile
			if df == "" {
				df = "Dockerfile"
			}
			dfPath, args := filepath.Join(dir, df), slices.Clone(kilnArgs)
			if c.outside != "" {
				odir := t.TempDir()
				writeCompatContext(t, odir, map[string]string{"Dockerfile": c.outside}, base)
				dfPath = filepath.Join(odir, "Dockerfile")
				args = append(args, "-f", dfPath)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			ref := reg + "/" + repo + ":" + tag
			out, refErr := reference(ctx, dir, dfPath, ref+"-"+refName)
			r := kiln(t, k.addrs.GRPC, append(append([]string{"build", "--progress", "plain", "-t", ref + "-kiln", "--push"}, args...), dir)...)
			switch {
			case c.fails && (refErr == nil || r.code == 0):
				t.Fatalf("want both builds to fail: %s %v\n%s\nkiln %s", refName, refErr, out, r)
			case c.fails:
				return
			case refErr != nil && r.code == 0:
				t.Fatalf("kiln built what %s refused (%v):\n%s", refName, refErr, out)
			case refErr != nil:
				t.Logf("%s and kiln both refuse this case (%v)", refName, refErr)
				return
			case r.code != 0:
				t.Fatalf("kiln build failed where %s succeeded: %s", refName, r)
			}
			compareImages(t, refName, fetchImage(t, reg, repo, tag+"-"+refName), fetchImage(t, reg, repo, tag+"-kiln"))
		})
	}
}

// writeCompatContext writes files as writeTree does ("->" makes a
// symlink, a trailing "/" a directory), the Dockerfile's %[1]s the base.
func writeCompatContext(t *testing.T, dir string, files map[string]string, base string) {
	t.Helper()
	for name, body := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		var err error
		switch {
		case strings.HasSuffix(name, "/"):
			err = os.MkdirAll(p, 0o755)
		case strings.HasPrefix(body, "->"):
			err = os.Symlink(strings.TrimPrefix(body, "->"), p)
		default:
			if strings.Contains(body, "%[1]s") {
				body = fmt.Sprintf(body, base)
			}
			err = os.WriteFile(p, []byte(body), 0o644)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

func chmod(t *testing.T, p string, mode os.FileMode) {
	t.Helper()
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}

// writeArchive writes a.tar.gz: a directory, a file, a symlink and an
// owned file, for ADD to unpack.
func writeArchive(t *testing.T, dir string) {
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	mtime := time.Unix(1700000000, 0)
	for _, h := range []*tar.Header{
		{Name: "top/", Typeflag: tar.TypeDir, Mode: 0o750, ModTime: mtime},
		{Name: "top/file", Typeflag: tar.TypeReg, Mode: 0o640, Size: 5, Uid: 123, Gid: 456, ModTime: mtime},
		{Name: "top/link", Typeflag: tar.TypeSymlink, Linkname: "file", Mode: 0o777, ModTime: mtime},
	} {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			tw.Write([]byte("hello"))
		}
	}
	tw.Close()
	gz.Close()
	if err := os.WriteFile(filepath.Join(dir, "a.tar.gz"), buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

// pushedImage is what the suite compares of a pushed image.
type pushedImage struct {
	config map[string]any
	layers [][]string // each layer's entries, one line each, sorted
}

// fetchImage reads repo:tag's manifest, config and layers from reg.
func fetchImage(t *testing.T, reg, repo, tag string) pushedImage {
	t.Helper()
	get := func(path, accept string) []byte {
		req, _ := http.NewRequest(http.MethodGet, "http://"+reg+"/v2/"+repo+"/"+path, nil)
		req.Header.Set("Accept", accept)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %s %v %s", path, resp.Status, err, body)
		}
		return body
	}
	var m struct {
		Config struct{ Digest string }
		Layers []struct {
			Digest, MediaType string
		}
	}
	if err := json.Unmarshal(get("manifests/"+tag, "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json"), &m); err != nil {
		t.Fatal(err)
	}
	var img pushedImage
	if err := json.Unmarshal(get("blobs/"+m.Config.Digest, "*/*"), &img.config); err != nil {
		t.Fatal(err)
	}
	for _, l := range m.Layers {
		img.layers = append(img.layers, layerEntries(t, get("blobs/"+l.Digest, "*/*")))
	}
	return img
}

// layerEntries lists a layer's tar entries without their times.
func layerEntries(t *testing.T, blob []byte) []string {
	t.Helper()
	var r io.Reader = bytes.NewReader(blob)
	if len(blob) > 2 && blob[0] == 0x1f && blob[1] == 0x8b {
		gz, err := gzip.NewReader(r)
		if err != nil {
			t.Fatal(err)
		}
		r = gz
	}
	tr := tar.NewReader(r)
	var out []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.New()
		io.Copy(sum, tr)
		out = append(out, fmt.Sprintf("%s type=%c mode=%o uid=%d gid=%d size=%d link=%q sha=%s",
			h.Name, h.Typeflag, h.Mode&0o7777, h.Uid, h.Gid, h.Size, h.Linkname, hex.EncodeToString(sum.Sum(nil))[:12]))
	}
	slices.Sort(out)
	return out
}

// classicSourceHash is the classic builder's "COPY dir:<sha256>".
var classicSourceHash = regexp.MustCompile(`\b(dir|file|multi):[0-9a-f]{64}\b`)

// compareImages reports every difference between want (the reference
// client's image) and got (kiln's), times excepted.
func compareImages(t *testing.T, refName string, want, got pushedImage) {
	t.Helper()
	norm := func(c map[string]any) string {
		c = deepCopy(c)
		delete(c, "created")
		if h, ok := c["history"].([]any); ok {
			for _, e := range h {
				if m, ok := e.(map[string]any); ok {
					delete(m, "created")
				}
			}
		}
		delete(c, "rootfs")    // diff ids follow the layers' times; the layers are compared below
		delete(c, "container") // the classic builder's step container
		b, _ := json.MarshalIndent(c, "", "  ")
		// The classic builder names a COPY's source by a hash over its
		// files' tar headers, times included.
		return classicSourceHash.ReplaceAllString(string(b), "$1:<hash>")
	}
	if w, g := norm(want.config), norm(got.config); w != g {
		t.Errorf("image configs differ:\n--- %s\n%s\n--- kiln\n%s", refName, w, g)
	}
	if len(want.layers) != len(got.layers) {
		t.Errorf("%s's image has %d layers, kiln's %d", refName, len(want.layers), len(got.layers))
		return
	}
	for i := range want.layers {
		if w, g := strings.Join(want.layers[i], "\n"), strings.Join(got.layers[i], "\n"); w != g {
			t.Errorf("layer %d differs:\n--- %s\n%s\n--- kiln\n%s", i, refName, w, g)
		}
	}
}

// deepCopy copies a JSON object deeply enough for compareImages' deletions.
func deepCopy(c map[string]any) map[string]any {
	b, _ := json.Marshal(c)
	var out map[string]any
	_ = json.Unmarshal(b, &out)
	return out
}
