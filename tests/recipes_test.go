package tests

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/kilnbuild/kiln/agent/enginetest"
)

// The CI recipes (templates/kiln-build.yml, examples/gitlab-ci.yml,
// action.yml) are run here as a CI system would run them: their script
// taken from the YAML, with the variables GitLab or GitHub sets, against
// the shared local farm and a registry that wants a password, with kiln
// on PATH.

// recipeRegistry is a registry that accepts only user with password, as
// a GitLab project's container registry accepts only the job's token.
type recipeRegistry struct {
	addr, user, password string
}

// digest returns the manifest digest the registry holds for repo:tag, or
// "" if it holds none.
func (r recipeRegistry) digest(t *testing.T, repo, tag string) string {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodHead, "http://"+r.addr+"/v2/"+repo+"/manifests/"+tag, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.SetBasicAuth(r.user, r.password)
	req.Header.Set("Accept", "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("asking the registry for %s:%s: %v", repo, tag, err)
	}
	res.Body.Close()
	switch res.StatusCode {
	case http.StatusOK:
		return res.Header.Get("Docker-Content-Digest")
	case http.StatusNotFound:
		return ""
	}
	t.Fatalf("the registry answered %s for %s:%s", res.Status, repo, tag)
	return ""
}

// removeTags removes the images the agent left tagged in the test engine
// when the test ends.
func removeTags(t *testing.T, refs ...string) {
	t.Cleanup(func() {
		for _, ref := range refs {
			removeImage(t, ref)
		}
	})
}

// kilnOnPath returns a PATH with the test's kiln binary first.
func kilnOnPath(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.Symlink(kilnBin, filepath.Join(dir, "kiln")); err != nil {
		t.Fatal(err)
	}
	return dir + string(os.PathListSeparator) + os.Getenv("PATH")
}

// runScript runs script with shell (argv, the script's file appended) in
// dir with exactly env, and returns its combined output.
func runScript(t *testing.T, shell []string, script, dir string, env map[string]string) (string, error) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "script")
	if err := os.WriteFile(file, []byte(script), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, shell[0], append(shell[1:], file)...)
	cmd.Dir = dir
	for _, k := range slices.Sorted(maps.Keys(env)) {
		cmd.Env = append(cmd.Env, k+"="+env[k])
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// readYAML decodes a YAML file of the repository into v.
func readYAML(t *testing.T, path string, v any) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", path))
	if err != nil {
		t.Fatal(err)
	}
	if v != nil {
		if err := yaml.Unmarshal(data, v); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
	}
	return data
}

// gitlabJob is the part of a GitLab CI job the tests run.
type gitlabJob struct {
	Variables map[string]string `yaml:"variables"`
	Script    []string          `yaml:"script"`
}

// gitlabComponent interpolates templates/kiln-build.yml as GitLab does for
// an include with inputs: the spec's defaults, overridden by inputs,
// replace every $[[ inputs.NAME ]] of the document after the spec
// (GitLab's interpolation functions are not used, and an input the spec
// does not declare fails the test as it fails the pipeline). It returns the
// component's jobs.
func gitlabComponent(t *testing.T, inputs map[string]string) map[string]gitlabJob {
	t.Helper()
	data := string(readYAML(t, "templates/kiln-build.yml", nil))
	header, body, ok := strings.Cut(data, "\n---\n")
	if !ok {
		t.Fatal("templates/kiln-build.yml: no --- after the spec")
	}
	var spec struct {
		Spec struct {
			Inputs map[string]struct {
				Default any    `yaml:"default"`
				Type    string `yaml:"type"`
			} `yaml:"inputs"`
		} `yaml:"spec"`
	}
	if err := yaml.Unmarshal([]byte(header), &spec); err != nil {
		t.Fatalf("templates/kiln-build.yml spec: %v", err)
	}
	values := map[string]string{}
	for name, in := range spec.Spec.Inputs {
		if in.Default == nil {
			t.Fatalf("input %s has no default", name)
		}
		values[name] = fmt.Sprint(in.Default)
	}
	for name, v := range inputs {
		if _, ok := values[name]; !ok {
			t.Fatalf("templates/kiln-build.yml has no input %q", name)
		}
		values[name] = v
	}
	var missing []string
	body = regexp.MustCompile(`\$\[\[\s*inputs\.([A-Za-z0-9_-]+)\s*\]\]`).ReplaceAllStringFunc(body, func(m string) string {
		name := regexp.MustCompile(`inputs\.([A-Za-z0-9_-]+)`).FindStringSubmatch(m)[1]
		v, ok := values[name]
		if !ok {
			missing = append(missing, name)
		}
		return v
	})
	if len(missing) > 0 {
		t.Fatalf("templates/kiln-build.yml uses undeclared inputs %v", missing)
	}
	if strings.Contains(body, "$[[") {
		t.Fatalf("templates/kiln-build.yml: an interpolation the test does not implement is left:\n%s", body)
	}
	jobs := map[string]gitlabJob{}
	if err := yaml.Unmarshal([]byte(body), &jobs); err != nil {
		t.Fatalf("templates/kiln-build.yml after interpolation: %v\n%s", err, body)
	}
	return jobs
}

// gitlabEnv is what a GitLab runner gives a job's script: the predefined
// variables (ci) and the job's variables, whose $VAR and ${VAR} references
// GitLab expands against the others.
func gitlabEnv(ci map[string]string, job gitlabJob) map[string]string {
	env := maps.Clone(ci)
	for k, v := range job.Variables {
		env[k] = os.Expand(v, func(name string) string { return ci[name] })
	}
	return env
}

// gitlabCI is a pipeline's predefined variables as GitLab sets them for a
// job of project 4242 in the registry reg.
func gitlabCI(t *testing.T, k *kilnd, reg recipeRegistry, jobID, branch, sha string) map[string]string {
	return map[string]string{
		"PATH":                 kilnOnPath(t),
		"HOME":                 t.TempDir(),
		"CI":                   "true",
		"GITLAB_CI":            "true",
		"CI_SERVER":            "yes",
		"CI_JOB_ID":            jobID,
		"CI_JOB_NAME":          "kiln-build",
		"CI_JOB_STAGE":         "build",
		"CI_PIPELINE_ID":       "7001",
		"CI_PROJECT_ID":        "4242",
		"CI_PROJECT_PATH":      "group/project",
		"CI_PROJECT_NAME":      "project",
		"CI_DEFAULT_BRANCH":    "main",
		"CI_COMMIT_BRANCH":     branch,
		"CI_COMMIT_REF_NAME":   branch,
		"CI_COMMIT_REF_SLUG":   strings.ReplaceAll(branch, "/", "-"),
		"CI_COMMIT_SHA":        sha + strings.Repeat("0", 40-len(sha)),
		"CI_COMMIT_SHORT_SHA":  sha,
		"CI_REGISTRY":          reg.addr,
		"CI_REGISTRY_IMAGE":    reg.addr + "/group/project",
		"CI_REGISTRY_USER":     reg.user,
		"CI_JOB_TOKEN":         reg.password,
		"CI_REGISTRY_PASSWORD": reg.password,
		"KILN_GATEWAY":         k.addrs.GRPC,
	}
}

// checkout copies a project into a fresh build directory, as a runner
// clones it for a job.
func checkout(t *testing.T, project string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.CopyFS(dir, os.DirFS(project)); err != nil {
		t.Fatal(err)
	}
	return dir
}

// runGitLabJob runs job's script as the kiln CLI image would — with its
// shell, busybox sh, one script with every line under set -e — in the
// checkout dir, and returns the job's log and the metadata file it leaves
// as its artifact.
func runGitLabJob(t *testing.T, job gitlabJob, env map[string]string, dir string) (string, map[string]any) {
	t.Helper()
	env["CI_PROJECT_DIR"], env["CI_BUILDS_DIR"] = dir, filepath.Dir(dir)
	out, err := runScript(t, []string{"busybox", "sh", "-e"}, strings.Join(job.Script, "\n"), dir, env)
	if err != nil {
		t.Fatalf("the job's script failed: %v\n%s", err, out)
	}
	if strings.Contains(out, env["CI_JOB_TOKEN"]) {
		t.Fatalf("the job's log shows the job token:\n%s", out)
	}
	return out, metadata(t, filepath.Join(dir, "kiln-metadata.json"))
}

// TestGitLabRecipes runs the GitLab recipes' script: the plain job of
// examples/gitlab-ci.yml and the component with inputs. The image is
// pushed under the commit's short SHA and the branch slug, and latest on
// the default branch only; a second run of the job's script with the same
// CI_JOB_ID re-attaches to the first build instead of building again.
func TestGitLabRecipes(t *testing.T) {
	k := sharedKilnd(t)
	reg := recipeRegistry{user: "gitlab-ci-token", password: "glcbt-" + uniq() + uniq()}
	reg.addr = enginetest.AuthRegistry(t, reg.user, reg.password)
	base := enginetest.BusyboxBase(t)
	const repo = "group/project"

	var example struct {
		Job gitlabJob `yaml:"build-image"`
	}
	readYAML(t, "examples/gitlab-ci.yml", &example)
	component := gitlabComponent(t, nil)["kiln-build"]
	if !slices.Equal(example.Job.Script, component.Script) {
		t.Fatalf("examples/gitlab-ci.yml and templates/kiln-build.yml run different scripts:\n%s\n---\n%s",
			strings.Join(example.Job.Script, "\n"), strings.Join(component.Script, "\n"))
	}

	t.Run("example", func(t *testing.T) {
		n := uniq()
		project := writeContext(t, map[string]string{"Dockerfile": "FROM " + base + "\nRUN echo main-" + n + " > /built\n"})
		sha := n[:8]
		removeTags(t, reg.addr+"/"+repo+":"+sha, reg.addr+"/"+repo+":main", reg.addr+"/"+repo+":latest")
		env := gitlabEnv(gitlabCI(t, k, reg, "91"+n, "main", sha), example.Job)
		dir := checkout(t, project)
		out, md := runGitLabJob(t, example.Job, env, dir)
		digest := str(md, "containerimage.digest")
		id := str(md, "kiln.build.id")
		for _, tag := range []string{sha, "main", "latest"} {
			if got := reg.digest(t, repo, tag); got != digest || digest == "" {
				t.Fatalf("%s:%s in the registry is %q, want the build's %q\n%s", repo, tag, got, digest, out)
			}
		}

		// The runner runs the job's script again (same job, same id, same
		// checkout): kiln re-attaches to the build, which is not built twice.
		out2, md2 := runGitLabJob(t, example.Job, env, dir)
		if got := str(md2, "kiln.build.id"); got != id {
			t.Fatalf("the job's second run made build %s, want the first run's %s\n%s", got, id, out2)
		}
		if str(md2, "containerimage.digest") != digest {
			t.Fatalf("the second run reports digest %s, want %s", str(md2, "containerimage.digest"), digest)
		}

		// A branch other than the default: commit and branch tags, and
		// latest stays the default branch's.
		feature := writeContext(t, map[string]string{"Dockerfile": "FROM " + base + "\nRUN echo feature-" + n + " > /built\n"})
		fsha := "f" + n[:7]
		removeTags(t, reg.addr+"/"+repo+":"+fsha, reg.addr+"/"+repo+":feature-x-"+n)
		fenv := gitlabEnv(gitlabCI(t, k, reg, "92"+n, "feature/x-"+n, fsha), example.Job)
		out3, fmd := runGitLabJob(t, example.Job, fenv, checkout(t, feature))
		fdigest := str(fmd, "containerimage.digest")
		if fdigest == digest || str(fmd, "kiln.build.id") == id {
			t.Fatalf("the feature branch's job did not build anew (digest %s, build %s)\n%s", fdigest, str(fmd, "kiln.build.id"), out3)
		}
		for _, tag := range []string{fsha, "feature-x-" + n} {
			if got := reg.digest(t, repo, tag); got != fdigest {
				t.Fatalf("%s:%s in the registry is %q, want the feature build's %q\n%s", repo, tag, got, fdigest, out3)
			}
		}
		if got := reg.digest(t, repo, "latest"); got != digest {
			t.Fatalf("latest is %q after a feature branch's job, want the default branch's %q", got, digest)
		}
	})

	t.Run("component", func(t *testing.T) {
		n := uniq()
		project := writeContext(t, map[string]string{
			"app/build.Dockerfile": "FROM " + base + " AS base\nARG GREETING\nRUN echo \"$GREETING\" > /greeting\nFROM base AS final\nRUN echo " + n + " > /built\nFROM base AS unused\nRUN exit 1\n",
		})
		extra := reg.addr + "/group/project/extra:" + n
		removeTags(t, reg.addr+"/group/project/app:"+n[:8], reg.addr+"/group/project/app:release", extra, reg.addr+"/group/project/extra:two-"+n)
		job := gitlabComponent(t, map[string]string{
			"job-name":   "image",
			"context":    "app",
			"dockerfile": "app/build.Dockerfile",
			"target":     "final",
			"image-name": "$CI_REGISTRY_IMAGE/app",
			"tags":       extra + ", " + reg.addr + "/group/project/extra:two-" + n,
			"build-args": "GREETING=hello-from-$CI_PROJECT_NAME UNUSED=1",
			"labels":     "org.opencontainers.image.revision=$CI_COMMIT_SHA",
		})["image"]
		sha := n[:8]
		env := gitlabEnv(gitlabCI(t, k, reg, "93"+n, "release", sha), job)
		out, md := runGitLabJob(t, job, env, checkout(t, project))
		digest := str(md, "containerimage.digest")
		for _, ref := range []string{repo + "/app:" + sha, repo + "/app:release", repo + "/extra:" + n, repo + "/extra:two-" + n} {
			r, tag, _ := strings.Cut(ref, ":")
			if got := reg.digest(t, r, tag); got != digest || digest == "" {
				t.Fatalf("%s in the registry is %q, want the build's %q\n%s", ref, got, digest, out)
			}
		}
		if got := reg.digest(t, repo+"/app", "latest"); got != "" {
			t.Fatalf("a job on a branch other than the default pushed latest (%s)", got)
		}
		mustContain(t, out, "greeting", "the job's log (the target's build arg step)")
		if got, code := runImage(t, extra, "cat", "/greeting"); code != 0 || got != "hello-from-project\n" {
			t.Fatalf("/greeting in the image is %q (exit %d), want the build arg with GitLab's variable expanded", got, code)
		}
	})
	k.mustNotHold(t, "the job token", reg.password)
}

// githubAction is the part of action.yml the tests run.
type githubAction struct {
	Inputs map[string]struct {
		Default string `yaml:"default"`
	} `yaml:"inputs"`
	Outputs map[string]struct {
		Value string `yaml:"value"`
	} `yaml:"outputs"`
	Runs struct {
		Using string `yaml:"using"`
		Steps []struct {
			ID    string            `yaml:"id"`
			Shell string            `yaml:"shell"`
			Env   map[string]string `yaml:"env"`
			Run   string            `yaml:"run"`
		} `yaml:"steps"`
	} `yaml:"runs"`
}

// expression matches a GitHub Actions expression, ${{ … }}.
var expression = regexp.MustCompile(`\$\{\{\s*([^}]*?)\s*\}\}`)

// substitute replaces the expressions of s that name a key of values
// ("inputs.tags", "steps.build.outputs.digest"); any other expression
// fails the test, so an action that starts using one is noticed here.
func substitute(t *testing.T, s string, values map[string]string) string {
	t.Helper()
	return expression.ReplaceAllStringFunc(s, func(m string) string {
		name := expression.FindStringSubmatch(m)[1]
		v, ok := values[name]
		if !ok {
			t.Fatalf("action.yml: the test does not implement the expression %s", m)
		}
		return v
	})
}

// readOutputs parses a $GITHUB_OUTPUT file: name=value lines and
// name<<DELIMITER blocks.
func readOutputs(t *testing.T, path string) map[string]string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("the step's outputs: %v", err)
	}
	out := map[string]string{}
	lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
	for i := 0; i < len(lines); i++ {
		if name, delim, ok := strings.Cut(lines[i], "<<"); ok && !strings.Contains(name, "=") {
			var value []string
			for i++; i < len(lines) && lines[i] != delim; i++ {
				value = append(value, lines[i])
			}
			out[name] = strings.Join(value, "\n")
			continue
		}
		name, value, ok := strings.Cut(lines[i], "=")
		if !ok {
			t.Fatalf("$GITHUB_OUTPUT line %q is neither name=value nor name<<DELIMITER", lines[i])
		}
		out[name] = value
	}
	return out
}

// runAction runs action.yml's steps as a runner runs a composite action:
// inputs are the defaults overridden by with; each step's env and run have
// their ${{ inputs.* }} expressions substituted; a bash step runs as
// `bash --noprofile --norc -eo pipefail FILE` in the workspace with the
// runner's variables (runner) and the step's env, and a $GITHUB_OUTPUT file
// of its own. It returns the action's outputs and the steps' log.
func runAction(t *testing.T, with, runner map[string]string) (map[string]string, string) {
	t.Helper()
	var action githubAction
	readYAML(t, "action.yml", &action)
	if action.Runs.Using != "composite" {
		t.Fatalf("action.yml runs using %q, want composite", action.Runs.Using)
	}
	values := map[string]string{}
	for name, in := range action.Inputs {
		values["inputs."+name] = in.Default
	}
	for name, v := range with {
		if _, ok := values["inputs."+name]; !ok {
			t.Fatalf("action.yml has no input %q", name)
		}
		values["inputs."+name] = v
	}
	var log strings.Builder
	for _, step := range action.Runs.Steps {
		if step.Shell != "bash" {
			t.Fatalf("step %s: the test runs bash steps, not %q", step.ID, step.Shell)
		}
		env := maps.Clone(runner)
		for k, v := range step.Env {
			env[k] = substitute(t, v, values)
		}
		env["GITHUB_OUTPUT"] = filepath.Join(t.TempDir(), "output")
		if err := os.WriteFile(env["GITHUB_OUTPUT"], nil, 0o600); err != nil {
			t.Fatal(err)
		}
		out, err := runScript(t, []string{"bash", "--noprofile", "--norc", "-eo", "pipefail"}, substitute(t, step.Run, values), runner["GITHUB_WORKSPACE"], env)
		log.WriteString(out)
		if err != nil {
			t.Fatalf("step %s failed: %v\n%s", step.ID, err, out)
		}
		for name, v := range readOutputs(t, env["GITHUB_OUTPUT"]) {
			values["steps."+step.ID+".outputs."+name] = v
		}
	}
	outputs := map[string]string{}
	for name, o := range action.Outputs {
		outputs[name] = substitute(t, o.Value, values)
	}
	return outputs, log.String()
}

// TestGitHubAction runs action.yml's steps with the variables a GitHub
// runner sets: the image is pushed under its tags with the inputs'
// credentials, a secret reaches its RUN step and no log, the outputs are
// build-push-action's (digest, imageid, metadata), and the step run again
// in the same attempt re-attaches to its build while a re-run builds anew.
func TestGitHubAction(t *testing.T) {
	k := sharedKilnd(t)
	reg := recipeRegistry{user: "octocat", password: "ghs_" + uniq() + uniq()}
	reg.addr = enginetest.AuthRegistry(t, reg.user, reg.password)
	base := enginetest.BusyboxBase(t)
	n := uniq()
	secret := "s3cret-" + uniq() + uniq()
	workspace := writeContext(t, map[string]string{
		"docker/app.Dockerfile": "FROM " + base + "\nARG N\nRUN echo \"$N\" > /n\n" +
			"RUN --mount=type=secret,id=tok sha256sum /run/secrets/tok | cut -d' ' -f1 > /sum\n",
	})
	const repo = "octo/app"
	tags := []string{reg.addr + "/" + repo + ":" + n, reg.addr + "/" + repo + ":latest"}
	removeTags(t, tags...)
	with := map[string]string{
		"context":           ".",
		"file":              "docker/app.Dockerfile",
		"tags":              strings.Join(tags, "\n") + "\n",
		"build-args":        "N=" + n,
		"labels":            "org.opencontainers.image.source=https://github.com/octo/app\n",
		"push":              "true",
		"secrets":           "tok=" + secret,
		"gateway":           k.addrs.GRPC,
		"registry-username": reg.user,
		"registry-password": reg.password,
	}
	runner := map[string]string{
		"PATH":                 kilnOnPath(t),
		"HOME":                 t.TempDir(),
		"CI":                   "true",
		"GITHUB_ACTIONS":       "true",
		"GITHUB_WORKSPACE":     workspace,
		"GITHUB_ACTION_PATH":   repoRoot(t),
		"GITHUB_REPOSITORY":    repo,
		"GITHUB_REPOSITORY_ID": "123456",
		"GITHUB_RUN_ID":        "88" + n,
		"GITHUB_RUN_ATTEMPT":   "1",
		"GITHUB_JOB":           "image",
		"GITHUB_SHA":           n + strings.Repeat("0", 40-len(n)),
		"GITHUB_REF":           "refs/heads/main",
		"RUNNER_TEMP":          t.TempDir(),
	}
	outputs, log := runAction(t, with, runner)
	for _, s := range []string{secret, reg.password} {
		if strings.Contains(log, s) {
			t.Fatalf("the step's log shows a secret:\n%s", log)
		}
	}
	for _, tag := range []string{n, "latest"} {
		if got := reg.digest(t, repo, tag); got == "" || got != outputs["digest"] {
			t.Fatalf("%s:%s in the registry is %q, want the digest output %q\n%s", repo, tag, got, outputs["digest"], log)
		}
	}
	if !strings.HasPrefix(outputs["imageid"], "sha256:") {
		t.Fatalf("imageid output %q is not an image id", outputs["imageid"])
	}
	var md map[string]any
	if err := json.Unmarshal([]byte(outputs["metadata"]), &md); err != nil {
		t.Fatalf("the metadata output is not JSON: %v\n%s", err, outputs["metadata"])
	}
	if str(md, "containerimage.digest") != outputs["digest"] || str(md, "kiln.build.id") == "" || str(md, "kiln.build.id") != outputs["build-id"] {
		t.Fatalf("the metadata output %v does not match the digest output %q and the build-id output %q", md, outputs["digest"], outputs["build-id"])
	}
	if got, code := runImage(t, tags[0], "cat", "/sum"); code != 0 || strings.TrimSpace(got) != fmt.Sprintf("%x", sha256Sum(secret)) {
		t.Fatalf("the secret's digest in the image is %q (exit %d): the secret did not reach its step", got, code)
	}
	k.mustNotHold(t, "the action's secret", secret)

	// The same step again in the same attempt: the same build.
	again, log := runAction(t, with, runner)
	if again["build-id"] != outputs["build-id"] || again["digest"] != outputs["digest"] {
		t.Fatalf("the step run again made build %s (%s), want the first run's %s (%s)\n%s",
			again["build-id"], again["digest"], outputs["build-id"], outputs["digest"], log)
	}
	// A re-run of the workflow (the next attempt): a new build, from cache.
	runner["GITHUB_RUN_ATTEMPT"] = "2"
	rerun, log := runAction(t, with, runner)
	if rerun["build-id"] == outputs["build-id"] || rerun["digest"] != outputs["digest"] {
		t.Fatalf("the re-run made build %s (%s), want a new build of the same image %s\n%s",
			rerun["build-id"], rerun["digest"], outputs["digest"], log)
	}
}

func sha256Sum(s string) [32]byte { return sha256.Sum256([]byte(s)) }

// repoRoot is the repository's root directory, where action.yml lives.
func repoRoot(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestGitLabJobInKilnImage runs examples/gitlab-ci.yml's job the way a
// GitLab runner's docker executor does: in the kiln CLI image that
// `make images` builds (scripts/images.sh kiln), with its entrypoint
// emptied, its own shell, as its nonroot user, the checkout mounted as the
// build directory. The image is pushed under the job's tags.
func TestGitLabJobInKilnImage(t *testing.T) {
	k := sharedKilnd(t)
	root := repoRoot(t)
	tag := "test-" + uniq()
	images := exec.Command(filepath.Join(root, "scripts", "images.sh"), "kiln")
	images.Dir = root
	images.Env = append(os.Environ(), "KILN_BIN_DIR="+filepath.Dir(kilnBin), "KILN_GATEWAY="+k.addrs.GRPC,
		"KILN_IMAGE_PREFIX=kiln-e2e-recipes/", "KILN_IMAGE_TAG="+tag, "KILN_IMAGES_PUSH=0",
		"KILN_IMAGES_LOG_DIR="+t.TempDir())
	var imagesErr bytes.Buffer
	images.Stderr = &imagesErr
	out, err := images.Output()
	image := strings.TrimSpace(string(out))
	if image != "" {
		removeTags(t, image)
	}
	if err != nil || image != "kiln-e2e-recipes/kiln:"+tag {
		t.Fatalf("scripts/images.sh kiln printed %q: %v\n%s", image, err, imagesErr.String())
	}
	inspect, err := exec.Command("docker", "image", "inspect", "--format", "{{.Config.User}} {{json .Config.Entrypoint}}", image).CombinedOutput()
	if got := strings.TrimSpace(string(inspect)); err != nil || got != `65532:65532 ["/usr/local/bin/kiln"]` {
		t.Fatalf("%s runs as and starts %q (%v), want the nonroot user 65532:65532 and kiln: scripts/images.sh must build the kiln image from deploy/docker/cli.Dockerfile", image, got, err)
	}

	reg := recipeRegistry{user: "gitlab-ci-token", password: "glcbt-" + uniq() + uniq()}
	reg.addr = enginetest.AuthRegistry(t, reg.user, reg.password)
	var example struct {
		Job gitlabJob `yaml:"build-image"`
	}
	readYAML(t, "examples/gitlab-ci.yml", &example)
	n := uniq()
	dir := checkout(t, writeContext(t, map[string]string{"Dockerfile": "FROM " + enginetest.BusyboxBase(t) + "\nRUN echo image-" + n + " > /built\n"}))
	// The runner's build directory belongs to the job's user.
	if err := filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, 65532, 65532)
	}); err != nil {
		t.Fatal(err)
	}
	const projectDir = "/builds/group/project"
	sha := n[:8]
	removeTags(t, reg.addr+"/group/project:"+sha, reg.addr+"/group/project:main", reg.addr+"/group/project:latest")
	env := gitlabEnv(gitlabCI(t, k, reg, "94"+n, "main", sha), example.Job)
	delete(env, "PATH") // the image's own
	delete(env, "HOME")
	env["CI_PROJECT_DIR"], env["CI_BUILDS_DIR"] = projectDir, "/builds"
	args := []string{"run", "--rm", "--network", "host", "--entrypoint", "", "-v", dir + ":" + projectDir, "-w", projectDir}
	for _, name := range slices.Sorted(maps.Keys(env)) {
		args = append(args, "-e", name+"="+env[name])
	}
	args = append(args, image, "sh", "-e", "-c", strings.Join(example.Job.Script, "\n"))
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	log, err := exec.CommandContext(ctx, "docker", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("the job in %s failed: %v\n%s", image, err, log)
	}
	md := metadata(t, filepath.Join(dir, "kiln-metadata.json"))
	digest := str(md, "containerimage.digest")
	for _, tag := range []string{sha, "main", "latest"} {
		if got := reg.digest(t, "group/project", tag); got == "" || got != digest {
			t.Fatalf("group/project:%s in the registry is %q, want the job's %q\n%s", tag, got, digest, log)
		}
	}
}
