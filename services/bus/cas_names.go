package bus

// Names of the CAS quota and garbage-collection resources (README
// "Build contexts: quotas and garbage collection").
const (
	// BucketCASUsage maps each tenant (hex of its name) to the bytes of
	// context blobs charged to it in KILN_CAS.
	BucketCASUsage = "KILN_CAS_USAGE"
	// SubjectCASDeleted carries the digests the CAS garbage collector
	// deleted (newline-separated), so every gateway forgets them at once.
	SubjectCASDeleted = "kiln.cas.deleted"
	// LeaderKeyCASGC is the key of the CAS garbage collector's lease in
	// KILN_LEADER: one gateway collects at a time.
	LeaderKeyCASGC = "cas-gc"
)
