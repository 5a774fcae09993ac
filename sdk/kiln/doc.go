// Package kiln is the Go client of the kiln build farm.
//
// A build goes through these steps: [PackContext], then methods of [Client]:
//
//	PackContext(dir, dockerfile)      tar the context dir honouring .dockerignore,
//	         │                        spooled to a temp file and hashed (sha256)
//	         ▼
//	UploadContext ── FindMissingBlobs ──▶ UploadBlobs (1 MiB chunks, only if missing)
//	         │
//	         ▼
//	StartBuild ──▶ Build record (queued)
//	         │
//	         ▼
//	WatchBuild ── BuildEvent stream, resumed from the last sequence + 1 when the
//	         │    connection drops, until the finished event
//	         ▼
//	GetBuild ──▶ the final Build record
//
// [Client.Build] runs upload, start, watch and the final GetBuild in one
// call. Errors returned by the client keep the gRPC status of the failing
// call (status.FromError and status.Code work on them) with a prefix that
// says what was being done.
package kiln
