// Package casgc deletes KILN_CAS blobs that no live or recent build needs:
// a mark-and-sweep collector with a grace period.
//
//	roots:  the context of every build that is not finished, or finished
//	        within Retention (a manifest context brings its file blobs),
//	        and every blob stored or touched within Grace (a fresh manifest
//	        brings its file blobs: a client between PutManifest and
//	        StartBuild is protected by the manifest it just put)
//	mark:   everything the roots reach
//	sweep:  an unmarked blob becomes a candidate; a candidate still
//	        unmarked on a scan at least Grace after it first was one is
//	        deleted, its owner's usage credited, and its digest announced
//	        on kiln.cas.deleted so every gateway forgets it
//
// Blobs are listed before the builds and listed again after them, so a
// build created or a manifest put while a sweep runs is seen. One collector
// runs at a time, behind a lease (Lease) in KILN_LEADER; a new holder keeps
// nothing of its predecessor's candidates and so only deletes later.
package casgc

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/buildstore"
	"github.com/kilnbuild/kiln/services/bus"
	"github.com/kilnbuild/kiln/services/cas"
	"github.com/kilnbuild/kiln/services/ctxmanifest"
)

// Config wires a Collector.
type Config struct {
	Blobs  *cas.Store
	Usage  *cas.Usage
	Builds *buildstore.Store
	// NC announces deleted digests on bus.SubjectCASDeleted; nil: silent.
	NC *nats.Conn
	// Retention keeps the contexts of builds finished this recently.
	Retention time.Duration
	// Grace keeps blobs stored or touched this recently, and is how long a
	// blob must stay unreferenced before it is deleted.
	Grace time.Duration
	// Now reads the clock (tests inject one); nil: time.Now.
	Now    func() time.Time
	Logger *slog.Logger
}

// Collector holds the candidates between sweeps. Sweep is not safe for
// concurrent use: one goroutine owns a Collector.
type Collector struct {
	cfg        Config
	candidates map[string]time.Time // digest → first sweep that found it unreferenced
}

// New returns a Collector with no candidates yet.
func New(cfg Config) *Collector {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Collector{cfg: cfg, candidates: map[string]time.Time{}}
}

// Result says what one sweep did.
type Result struct {
	// Blobs is how many blobs were stored when the sweep began.
	Blobs int
	// Referenced is how many of them the roots reach.
	Referenced int
	// Candidates is how many are unreferenced but not yet deleted.
	Candidates int
	// Deleted and DeletedBytes are what the sweep removed.
	Deleted      int
	DeletedBytes int64
}

// Sweep runs one mark-and-sweep.
func (c *Collector) Sweep(ctx context.Context) (Result, error) {
	now := c.cfg.Now()
	before, err := c.cfg.Blobs.List(ctx)
	if err != nil {
		return Result{}, err
	}
	m := &marker{ctx: ctx, blobs: c.cfg.Blobs, log: c.cfg.Logger, marked: map[string]bool{}, followed: map[string]bool{}}
	builds, err := c.cfg.Builds.List(ctx)
	if err != nil {
		return Result{}, fmt.Errorf("list builds: %w", err)
	}
	for _, b := range builds {
		if c.live(b, now) && b.GetContext().GetDigest() != nil {
			m.mark(b.Context.Digest.Hash, b.Context.Format == kilnv1.ContextFormat_CONTEXT_FORMAT_MANIFEST)
		}
		// A live build's named contexts (--build-context DIR) are
		// uploaded manifests like its main context.
		for _, nc := range b.GetSpec().GetBuildContexts() {
			if c.live(b, now) && nc.GetContext().GetDigest() != nil {
				m.mark(nc.Context.Digest.Hash, nc.Context.Format == kilnv1.ContextFormat_CONTEXT_FORMAT_MANIFEST)
			}
		}
	}
	after, err := c.cfg.Blobs.List(ctx) // what was stored or touched while we read the builds
	if err != nil {
		return Result{}, err
	}
	for _, o := range after {
		if now.Sub(o.ModTime) < c.cfg.Grace {
			m.mark(o.Digest, o.Manifest)
		}
	}
	if m.err != nil {
		return Result{}, m.err
	}
	res := Result{Blobs: len(before)}
	unmarked := map[string]bool{}
	var deleted []string
	for _, o := range before {
		if m.marked[o.Digest] {
			res.Referenced++
			continue
		}
		unmarked[o.Digest] = true
		first, ok := c.candidates[o.Digest]
		if !ok {
			c.candidates[o.Digest] = now
			res.Candidates++
			continue
		}
		if now.Sub(first) < c.cfg.Grace {
			res.Candidates++
			continue
		}
		if err := c.cfg.Blobs.Delete(ctx, o.Digest); err != nil {
			c.cfg.Logger.WarnContext(ctx, "CAS garbage collection: delete failed", "digest", o.Digest, "err", err)
			continue
		}
		delete(c.candidates, o.Digest)
		deleted = append(deleted, o.Digest)
		res.Deleted++
		res.DeletedBytes += o.Size
		blobsDeleted.Inc()
		bytesDeleted.Add(float64(o.Size))
		if o.Owner != "" && c.cfg.Usage != nil {
			if err := c.cfg.Usage.Credit(ctx, o.Owner, o.Size); err != nil {
				c.cfg.Logger.WarnContext(ctx, "CAS garbage collection: credit failed", "tenant", o.Owner, "bytes", o.Size, "err", err)
			}
		}
	}
	for d := range c.candidates {
		if !unmarked[d] {
			delete(c.candidates, d) // referenced again, or gone
		}
	}
	c.announce(deleted)
	if c.cfg.Usage != nil {
		if all, err := c.cfg.Usage.All(ctx); err == nil {
			for tenant, n := range all {
				tenantUsage.WithLabelValues(tenant).Set(float64(n))
			}
		}
	}
	c.cfg.Logger.InfoContext(ctx, "CAS garbage collection", "blobs", res.Blobs, "referenced", res.Referenced,
		"candidates", res.Candidates, "deleted", res.Deleted, "deleted_bytes", res.DeletedBytes)
	return res, nil
}

// live reports whether b's context is a root: b is not finished, or
// finished within the retention.
func (c *Collector) live(b *kilnv1.Build, now time.Time) bool {
	if !buildstore.Terminal(b.State) {
		return true
	}
	end := b.GetFinishedAt()
	if end == nil {
		end = b.GetCreatedAt()
	}
	return end == nil || now.Sub(end.AsTime()) < c.cfg.Retention
}

// announceBatch keeps each kiln.cas.deleted message well under NATS's
// default 1 MB payload.
const announceBatch = 8192

func (c *Collector) announce(digests []string) {
	if c.cfg.NC == nil {
		return
	}
	for len(digests) > 0 {
		n := min(len(digests), announceBatch)
		_ = c.cfg.NC.Publish(bus.SubjectCASDeleted, []byte(strings.Join(digests[:n], "\n")))
		digests = digests[n:]
	}
	_ = c.cfg.NC.Flush()
}

// marker marks blobs and follows manifests to their file blobs, each once.
type marker struct {
	ctx      context.Context
	blobs    *cas.Store
	log      *slog.Logger
	marked   map[string]bool
	followed map[string]bool
	err      error // a failure that makes the mark incomplete
}

func (m *marker) mark(digest string, manifest bool) {
	m.marked[digest] = true
	if !manifest || m.followed[digest] || m.err != nil {
		return
	}
	m.followed[digest] = true
	r, err := m.blobs.Get(m.ctx, digest)
	if err != nil {
		if m.ctx.Err() != nil {
			m.err = m.ctx.Err()
		}
		// A manifest that is gone references nothing we could keep.
		m.log.DebugContext(m.ctx, "CAS garbage collection: manifest unreadable", "digest", digest, "err", err)
		return
	}
	defer r.Close()
	data, err := io.ReadAll(io.LimitReader(r, ctxmanifest.MaxManifestBytes+1))
	if err != nil {
		// Keep everything rather than sweep with a partial mark.
		m.err = fmt.Errorf("read manifest %s: %w", digest, err)
		return
	}
	man, err := ctxmanifest.Unmarshal(data)
	if err != nil {
		m.log.WarnContext(m.ctx, "CAS garbage collection: manifest does not decode", "digest", digest, "err", err)
		return
	}
	for _, e := range man.Entries {
		if e.GetDigest() != nil {
			m.marked[e.Digest.Hash] = true
		}
	}
}
