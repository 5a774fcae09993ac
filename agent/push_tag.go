package agent

import (
	"context"
	"fmt"
	"sync"

	"github.com/kilnbuild/kiln/agent/engine"
)

// tagger is an engine that can point a tag at an image (Docker's): the
// agent re-tags each image just before it pushes it, because two builds of
// one tag on a shared engine (a kilnd's slots, the children of a
// multi-platform build, two agents on one engine) each tag the image they
// built, and a push sends whatever the tag names at that moment.
type tagger interface {
	Tag(ctx context.Context, imageID, tag string) error
}

// tagLocks serialise, within one agent, the re-tag and push of one tag, so
// its own builds of a tag cannot push each other's images. Agents sharing
// an engine can still race between the re-tag and the push's start; the
// index writer's platform check catches what that leaves.
type tagLocks struct {
	mu    sync.Mutex
	locks map[string]*tagLock
}

type tagLock struct {
	sync.Mutex
	users int
}

// lock locks tag and returns its unlock.
func (t *tagLocks) lock(tag string) (unlock func()) {
	t.mu.Lock()
	if t.locks == nil {
		t.locks = map[string]*tagLock{}
	}
	l := t.locks[tag]
	if l == nil {
		l = &tagLock{}
		t.locks[tag] = l
	}
	l.users++
	t.mu.Unlock()
	l.Lock()
	return func() {
		l.Unlock()
		t.mu.Lock()
		if l.users--; l.users == 0 {
			delete(t.locks, tag)
		}
		t.mu.Unlock()
	}
}

// pushImage points tag at imageID again (on an engine that can) and pushes
// it, holding the tag's lock throughout.
func (a *Agent) pushImage(ctx context.Context, imageID, tag string, creds engine.Credentials, log func(string)) (string, int64, error) {
	defer a.pushing.lock(tag)()
	if t, ok := a.cfg.Engine.(tagger); ok && imageID != "" {
		if err := t.Tag(ctx, imageID, tag); err != nil {
			return "", 0, fmt.Errorf("tag the image %s as %s: %w", imageID, tag, err)
		}
	}
	return a.cfg.Engine.Push(ctx, tag, creds, log)
}
