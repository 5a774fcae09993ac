package cli

import (
	"context"
	"testing"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

func lookupOf(env map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := env[k]; return v, ok }
}

func TestCIAttributes(t *testing.T) {
	for _, tc := range []struct {
		name string
		env  map[string]string
		want map[string]string
	}{
		{"not in CI", map[string]string{"CI_PIPELINE_ID": "1"}, map[string]string{}},
		{"GitLab CI", map[string]string{
			"GITLAB_CI": "true", "CI_PROJECT_PATH": "group/app", "CI_PIPELINE_ID": "4711", "CI_JOB_NAME": "build-image",
			"CI_JOB_ID": "99", "CI_RUNNER_ID": "12", "CI_RUNNER_DESCRIPTION": "shared-1",
		}, map[string]string{
			"cicd.pipeline.name": "group/app", "cicd.pipeline.run.id": "4711", "cicd.pipeline.task.name": "build-image",
			"cicd.pipeline.task.run.id": "99", "cicd.worker.id": "12", "cicd.worker.name": "shared-1",
		}},
		{"GitLab CI pipeline name", map[string]string{"GITLAB_CI": "true", "CI_PROJECT_PATH": "group/app", "CI_PIPELINE_NAME": "nightly"},
			map[string]string{"cicd.pipeline.name": "nightly"}},
		{"GitHub Actions", map[string]string{
			"GITHUB_ACTIONS": "true", "GITHUB_WORKFLOW": "CI", "GITHUB_RUN_ID": "123", "GITHUB_JOB": "image",
			"RUNNER_NAME": "runner-7", "GITHUB_SERVER_URL": "https://github.com", "GITHUB_REPOSITORY": "o/r",
		}, map[string]string{
			"cicd.pipeline.name": "CI", "cicd.pipeline.run.id": "123", "cicd.pipeline.task.name": "image",
			"cicd.worker.id": "runner-7", "cicd.pipeline.run.url.full": "https://github.com/o/r/actions/runs/123",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := map[string]string{}
			for _, kv := range ciAttributes(lookupOf(tc.env)) {
				got[string(kv.Key)] = kv.Value.AsString()
			}
			for k, v := range tc.want {
				if got[k] != v {
					t.Errorf("%s = %q, want %q (all: %v)", k, got[k], v, got)
				}
			}
			if len(tc.want) == 0 && len(got) != 0 {
				t.Errorf("attributes outside CI: %v", got)
			}
		})
	}
}

// TestTraceContinuesTRACEPARENT: without an exporter the CLI records
// nothing, but the RPCs it sends carry the CI job's trace.
func TestTraceContinuesTRACEPARENT(t *testing.T) {
	const parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	lookup := lookupOf(map[string]string{"TRACEPARENT": parent})
	tr := newCLITrace(context.Background(), lookup)
	if tr.sdk != nil {
		t.Fatal("an exporter was set up without OTEL_EXPORTER_OTLP_ENDPOINT")
	}
	ctx := tr.start(context.Background(), lookup, &buildOptions{spec: &kilnv1.BuildSpec{}})
	sc := trace.SpanContextFromContext(ctx)
	if sc.TraceID().String() != "0af7651916cd43dd8448eb211c80319c" {
		t.Fatalf("trace id %s, want TRACEPARENT's", sc.TraceID())
	}
	out := propagation.MapCarrier{}
	tr.prop.Inject(ctx, out)
	if out["traceparent"] != parent {
		t.Fatalf("sent traceparent %q, want %q", out["traceparent"], parent)
	}
	tr.end(ExitOK)
	if err := tr.flush(); err != nil {
		t.Fatal(err)
	}
}
