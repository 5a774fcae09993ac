package agent

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/kilnbuild/kiln/agent/localcas"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/buildstore"
)

// The agent's Prometheus metrics, on its HTTP port (/metrics).
var (
	buildsRun = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "kiln_agent_builds_total",
		Help: "Builds this agent ran, by result (succeeded, failed, cancelled; handed_back: re-queued when the agent drained or lost the farm; abandoned: another attempt owned the build) and builder (buildkit, classic, none: failed before one was chosen).",
	}, []string{"result", "builder"})
	buildDuration = promauto.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "kiln_agent_build_duration_seconds",
		Help:    "Time from a build's start on this agent (RUNNING) to its end, push included, by result.",
		Buckets: []float64{.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 3600},
	}, []string{"result"})
	stepDuration = promauto.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "kiln_agent_step_duration_seconds",
		Help:    "Duration of Dockerfile steps as the engine reported them, by whether the step came from the cache.",
		Buckets: []float64{.001, .005, .01, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600},
	}, []string{"cached"})
	steps = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "kiln_agent_steps_total",
		Help: "Dockerfile steps finished, by whether they came from the cache (cached=true) or ran (cached=false).",
	}, []string{"cached"})
	slotsTotal = promauto.NewGauge(prometheus.GaugeOpts{
		Name: "kiln_agent_slots",
		Help: "Builds this agent runs at once (--slots).",
	})
	slotsBusy = promauto.NewGauge(prometheus.GaugeOpts{
		Name: "kiln_agent_slots_busy",
		Help: "Slots running a build now; kiln_agent_slots minus this is free.",
	})
	contextFetchedBytes = promauto.NewCounter(prometheus.CounterOpts{
		Name: "kiln_agent_context_fetched_bytes_total",
		Help: "Build-context bytes downloaded from the farm's CAS (blobs this agent did not hold, and whole tar contexts).",
	})
	contextLocalBytes = promauto.NewCounter(prometheus.CounterOpts{
		Name: "kiln_agent_context_local_bytes_total",
		Help: "Build-context bytes this agent already held in its local CAS, so nothing was downloaded.",
	})
	contextTransferBytes = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "kiln_agent_context_transfer_bytes_total",
		Help: "Build-context bytes sent to the engine, by builder: the whole context tar with classic, only the files the engine lacked with buildkit.",
	}, []string{"builder"})
	cacheExportDuration = promauto.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "kiln_agent_cache_export_duration_seconds",
		Help:    "Automatic warm start cache exports after a build's result, by result (ok, failed).",
		Buckets: []float64{.1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600},
	}, []string{"result"})
)

// observeCacheExport counts one automatic cache export.
func observeCacheExport(err error, took time.Duration) {
	result := "ok"
	if err != nil {
		result = "failed"
	}
	cacheExportDuration.WithLabelValues(result).Observe(took.Seconds())
}

// Values of the result label.
const (
	outcomeHandedBack = "handed_back"
	outcomeAbandoned  = "abandoned"
)

func init() {
	for _, c := range []string{"true", "false"} {
		steps.WithLabelValues(c)
	}
	for _, b := range []string{"buildkit", "classic"} {
		contextTransferBytes.WithLabelValues(b)
	}
}

// outcome names how finish ends a build, as the result label: the same
// decisions in the same order as finish.
func outcome(buildErr, cause error) string {
	switch {
	case errors.Is(cause, errLost) || errors.Is(buildErr, buildstore.ErrFenced):
		return outcomeAbandoned
	case errors.Is(cause, errDrained), cause == nil && isFarm(buildErr):
		return outcomeHandedBack
	case buildErr == nil:
		return "succeeded"
	case errors.Is(cause, errCancelled):
		return "cancelled"
	}
	return "failed"
}

// builderLabel is a builder as a label value.
func builderLabel(b kilnv1.Builder) string {
	switch b {
	case kilnv1.Builder_BUILDER_BUILDKIT:
		return "buildkit"
	case kilnv1.Builder_BUILDER_CLASSIC:
		return "classic"
	}
	return "none"
}

// observeBuild records a build that ran on this agent from started.
func observeBuild(result *kilnv1.BuildResult, buildErr, cause error, started time.Time) {
	o := outcome(buildErr, cause)
	buildsRun.WithLabelValues(o, builderLabel(result.GetBuilder())).Inc()
	buildDuration.WithLabelValues(o).Observe(time.Since(started).Seconds())
	if b := result.GetBuilder(); b != kilnv1.Builder_BUILDER_UNSPECIFIED {
		contextTransferBytes.WithLabelValues(builderLabel(b)).Add(float64(result.GetContextTransferBytes()))
	}
}

// observeStep records one finished Dockerfile step.
func observeStep(cached bool, took time.Duration) {
	c := "false"
	if cached {
		c = "true"
	}
	steps.WithLabelValues(c).Inc()
	stepDuration.WithLabelValues(c).Observe(took.Seconds())
}

// observeContextFetch records how a context's blobs were found.
func observeContextFetch(st localcas.Stats) {
	contextFetchedBytes.Add(float64(st.FetchedBytes))
	contextLocalBytes.Add(float64(st.LocalBytes))
}
