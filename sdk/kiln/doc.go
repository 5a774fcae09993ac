// Package kiln is the Go client of the kiln build farm.
//
// A build goes through these steps: [PackContext], then methods of [Client]:
//
//	PackContext(ctx, dir, dockerfile)   walk the context dir honouring .dockerignore
//	         │                          into a sorted ContextManifest; sha256 each
//	         │                          file unless the stat cache vouches for it
//	         ▼
//	UploadContext ── PutManifest ──▶ manifest digest + the file blobs missing
//	         │    └─ UploadBlobs ──▶ each missing blob once, 1 MiB chunks,
//	         │                       re-hashed from disk as it is sent
//	         ▼
//	StartBuild(ContextRef{manifest digest, CONTEXT_FORMAT_MANIFEST}) ──▶ Build record
//	         │
//	         ▼
//	WatchBuild ── BuildEvent stream, resumed from the last sequence + 1 when the
//	         │    connection drops, until the finished event
//	         ▼
//	GetBuild ──▶ the final Build record
//
// A second build of an unchanged context reads no file (the stat cache
// knows their digests) and uploads none (the farm has their blobs): only
// the manifest travels.
//
// [Client.Build] runs upload, start, watch and the final GetBuild in one
// call.
//
// [Dial] takes one gateway or several ("a:7700,b:7700", or a DNS name
// with several records): the Client uses one at a time and fails over to
// another when it becomes unreachable. Reads are retried, the upload
// resumes with the blobs the farm still lacks, StartBuild is retried only
// under an idempotency key (so a build is never started twice), and the
// watch resumes from the last event seen (see WithFailover). Errors returned by the client keep the gRPC status of the failing
// call (status.FromError and status.Code work on them) with a prefix that
// says what was being done.
package kiln
