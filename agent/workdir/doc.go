// Package workdir keeps the agent's build-context directories for BuildKit
// builds: one directory per lineage (a stable key that comes with each
// build) and slot, into which each build's context is materialized from its
// manifest (kiln.v1.ContextManifest) and the agent's local CAS.
//
// # Why stats matter
//
// In BuildKit mode the engine pulls the context from the agent by file sync
// (fsutil's DiffCopy) and keeps a copy per session shared key. fsutil
// decides what to send by comparing stats, not content: for a non-directory
// the mode, uid, gid, size, mtime in nanoseconds and link target; for a
// directory the mode, uid and gid. So a directory that keeps its unchanged
// files untouched, with the same stats, makes the engine fetch only what
// changed. That is what this package does:
//
//	Materialize(key, manifest)
//	  │ Validate (safety only) ──► normalize (add implied parent dirs)
//	  ▼
//	pin the lowest unpinned slot of key: root/<sha256(key)[:16 hex]>-<n>
//	  │ (all pinned: a new slot)
//	  ▼
//	read root/<slot>.record ── missing or damaged ──► empty the slot (Fresh)
//	  ▼
//	diff(record, manifest) ── nothing to do ──► return the slot as it is
//	  ▼
//	delete the record (synced) ──► remove gone entries ──► write changed
//	entries (files 4 at once) ──► directory modes and mtimes, deepest
//	first ──► syncfs ──►
//	write the record (tmp, fsync, rename)
//	  ▼
//	evict least recently used unpinned slots while over the bound
//
// Stats on disk are a function of the manifest alone: a file gets its
// entry's mode and an mtime of mtime_unix seconds plus a nanosecond part
// from its digest (same content, same mtime; changed content, changed
// mtime, even at the same size and second); directories and symlinks get
// mtime_unix. A slot rewritten from empty therefore looks the same to
// fsutil as before, and costs local writes but no transfer.
//
// # Records
//
// Next to each slot directory, <slot>.record holds the normalized manifest
// it contains, behind a sha256 checksum. It is deleted (and the deletion
// synced) before the directory changes, and written only once everything
// it describes is on disk, so a crash or failure part-way leaves no record,
// and the next Materialize of that slot starts from empty rather than
// trusting a half-written directory. Open deletes slot directories without
// a valid record.
//
// # Slots, pins and eviction
//
// Builds of one key may run at once: Materialize pins the slot it fills and
// the Dir it returns keeps it pinned until Release; a pinned slot is never
// modified nor evicted, so a second concurrent build of the key gets the
// next slot. The Slot name doubles as the BuildKit session's shared key.
// The store bounds the file bytes of all slots: after Materialize and at
// Release, unpinned slots are evicted whole, least recently used first
// (the order survives restarts through the records' mtimes), by renaming
// them into trash/ under the lock and deleting them after.
//
// # Safety
//
// Every directory is reached from the slot's descriptor one element at a
// time with O_NOFOLLOW, files are created with O_EXCL|O_NOFOLLOW and
// replaced by unlink-then-create, times are set with AT_SYMLINK_NOFOLLOW:
// whatever the disk holds, nothing is written outside the slot. Deletion
// gives each directory mode 0700 first, so read-only trees go too.
package workdir
