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
		Help: "Blob bytes received by UploadBlobs.",
	})
	uploadBlobsStored = promauto.NewCounter(prometheus.CounterOpts{
		Name: "kiln_context_upload_blobs_stored_total",
		Help: "Blobs stored by UploadBlobs after verification.",
	})
	uploadBlobsRefused = promauto.NewCounter(prometheus.CounterOpts{
		Name: "kiln_context_upload_blobs_refused_total",
		Help: "Blobs refused by UploadBlobs (digest mismatch, limits).",
	})
)
