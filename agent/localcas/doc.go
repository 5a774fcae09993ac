// Package localcas is the agent's disk cache of the farm's blobs (KILN_CAS,
// package services/cas): build contexts sent as manifests are made of
// blobs, and a blob that is already on the agent's disk is not fetched
// again.
//
//	Ensure(digests) ──► on disk? ──yes──► pin ─────────────────────────┐
//	                        │ no                                        │
//	                        ▼                                           ▼
//	              in flight for another build? ──yes──► wait ──► pin   Pin
//	                        │ no                                        │
//	                        ▼                                           │
//	   fetch ──► tmp/ (hash while writing) ──► verify ──► rename ──► pin┘
//	     │                                    mismatch: delete, error  ▲
//	     └─ small (≤ UnsyncedMaxBytes): memory ──► verify ──► kept in ─┘
//	        memory while under Config.MemoryBytes (memory.go), else
//	        written under its name (no temporary file, no rename:
//	        durability.go)
//
//	Pin.Release ──► unpinned blobs join the LRU list ──► evict from its
//	                cold end while the store is over its size bound
//
// On disk, dir/sha256/<hex> holds the blob with digest "sha256:<hex>";
// dir/tmp holds downloads in progress and is emptied at Open; dir/lock is
// held (flock) by the one process that uses the directory. A blob's mtime
// is its last use, to within an hour, so the LRU order survives a restart.
package localcas
