package casgc

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

var (
	blobsDeleted = promauto.NewCounter(prometheus.CounterOpts{
		Name: "kiln_cas_gc_blobs_deleted_total",
		Help: "KILN_CAS blobs the garbage collector deleted (unreferenced for longer than the grace period).",
	})
	bytesDeleted = promauto.NewCounter(prometheus.CounterOpts{
		Name: "kiln_cas_gc_bytes_deleted_total",
		Help: "Bytes of KILN_CAS blobs the garbage collector deleted.",
	})
	tenantUsage = promauto.NewGaugeVec(prometheus.GaugeOpts{
		Name: "kiln_cas_usage_bytes",
		Help: "Bytes of context blobs charged to each tenant (KILN_CAS_USAGE), as of the last collection.",
	}, []string{"tenant"})
)
