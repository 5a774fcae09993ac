// Package kiln is the Go client of the kiln build farm.
//
// [Dial] a farm, pack a build context with [PackContext], and hand both to
// [Client.Build]: it returns a [*Build] whose [Build.Events] deliver the
// build's typed events as they happen and whose [Build.Wait] returns the
// final record, or an error saying how the build did not succeed
// ([*BuildFailedError] with the failing step and its output,
// [ErrCancelled], [ErrTimedOut]). [Client.Watch] follows a build started
// elsewhere, from any event on; [Client.Get], [Client.List],
// [Client.Cancel], [Client.Retry], [Client.Agents] and [Client.FarmInfo]
// find and manage builds and show the farm.
// [Client.DownloadOutput] writes the output a build asked for with
// BuildSpec.outputs (buildx --output local, tar, oci, docker) once it has
// succeeded, verified and resumable; [Client.ReadOutput] reads one of its
// blobs.
//
// Under Client.Build, a build goes through these RPCs:
//
//	PackContext(ctx, dir, dockerfile)   walk the context dir honouring .dockerignore
//	         │                          into a sorted ContextManifest; sha256 each
//	         │                          file unless the stat cache vouches for it
//	         ▼
//	UploadContext ── PutManifest ──▶ manifest digest + the file blobs missing
//	         │    └─ UploadBlobs ──▶ each missing blob once, 1 MiB chunks,
//	         │                       re-hashed from disk as it is sent
//	         ▼
//	StartBuild(ContextRef{manifest digest, CONTEXT_FORMAT_MANIFEST}, idempotency key)
//	         │
//	         ▼
//	WatchBuild ── BuildEvent stream, resumed from the last sequence + 1 when the
//	         │    connection drops, until the finished event
//	         ▼
//	GetBuild ──▶ the final Build record (Build.Wait)
//
// A second build of an unchanged context reads no file (the stat cache
// knows their digests) and uploads none (the farm has their blobs): only
// the manifest travels.
//
// [Dial] takes one gateway or several ("a:7700,b:7700", or a DNS name
// with several records): the Client uses one at a time and fails over to
// another when it becomes unreachable. Reads are retried, the upload
// resumes with the blobs the farm still lacks, StartBuild is retried
// under the build's idempotency key (so a build is never started twice),
// and the watch resumes from the last event seen, so Events has no gap and
// no duplicate (see WithFailover). Errors returned by the client keep the
// gRPC status of the failing call (status.FromError and status.Code work
// on them) with a prefix that says what was being done.
package kiln
