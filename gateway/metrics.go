package gateway

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// Context-transfer counters: what clients declared, what they had to send
// and what the farm already held. A context rebuilt with one small change
// should move almost nothing.
var (
	contextBytesDeclared = promauto.NewCounter(prometheus.CounterOpts{
		Name: "kiln_context_bytes_declared_total",
		Help: "Bytes of files in accepted context manifests.",
	})
	contextBytesDeduplicated = promauto.NewCounter(prometheus.CounterOpts{
		Name: "kiln_context_bytes_deduplicated_total",
		Help: "Bytes of manifest files the farm already held, so nobody uploaded them.",
	})
	manifestBytesReceived = promauto.NewCounter(prometheus.CounterOpts{
		Name: "kiln_context_manifest_bytes_received_total",
		Help: "Bytes of context manifests received by PutManifest.",
	})
	uploadBytesReceived = promauto.NewCounter(prometheus.CounterOpts{
		Name: "kiln_context_upload_bytes_received_total",
		Help: "Blob bytes received by UploadBlobs and BatchUpdateBlobs.",
	})
	uploadBlobsStored = promauto.NewCounter(prometheus.CounterOpts{
		Name: "kiln_context_upload_blobs_stored_total",
		Help: "Blobs stored by UploadBlobs and BatchUpdateBlobs after verification.",
	})
	uploadBlobsRefused = promauto.NewCounter(prometheus.CounterOpts{
		Name: "kiln_context_upload_blobs_refused_total",
		Help: "Blobs refused by UploadBlobs and BatchUpdateBlobs (digest mismatch, limits).",
	})
)

// Build counters. The gateway counts what it is asked for; how builds end
// is counted where it is known for certain: the scheduler counts every
// build that ends after it was assigned (kiln_scheduler_builds_finished_total,
// including those failed after --max-attempts lost agents), the agents
// count what they ran (kiln_agent_builds_total), and the gateway counts
// the builds cancelled before they left the queue, which no other service
// sees end.
var (
	buildsStarted = promauto.NewCounterVec(prometheus.CounterOpts{
		Name: "kiln_gateway_builds_started_total",
		Help: "StartBuild calls that returned a build, by kind: queued (a new build), merged (joined an identical build in flight) or idempotent_replay (the idempotency key named an earlier build).",
	}, []string{"kind"})
	buildsCancelledQueued = promauto.NewCounter(prometheus.CounterOpts{
		Name: "kiln_gateway_builds_cancelled_queued_total",
		Help: "Builds cancelled while still queued (they end here, without reaching the scheduler's count).",
	})
)

// Values of kiln_gateway_builds_started_total's kind label.
const (
	startQueued           = "queued"
	startMerged           = "merged"
	startIdempotentReplay = "idempotent_replay"
)

func init() {
	for _, k := range []string{startQueued, startMerged, startIdempotentReplay} {
		buildsStarted.WithLabelValues(k)
	}
}
