package cli

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/sdk/internal/progress"
	"github.com/kilnbuild/kiln/sdk/kiln"
)

// A multi-platform build's log holds the farm's lines about it (its
// children's state changes, its image index's push); each platform's
// steps and lines are in its child's log. kiln build and kiln logs follow
// the children alongside it (kiln.Build.Children) and print their events
// with its own, as buildx prints a multi-platform build: steps numbered
// across the platforms and labelled with theirs ("#5 [linux/arm64 2/3]
// RUN uname -m"), a step's lines after its number ("#5 aarch64"), the
// farm's and the engine's lines after the platform ("[linux/arm64] …").
// Before the build's end come a line per platform naming the image it
// pushed and one naming the index.

// childLinger bounds how long the children are followed after the build
// ended: a failed platform ends it while the others are being cancelled.
const childLinger = 10 * time.Second

// isMultiPlatform reports whether b is a multi-platform build.
func isMultiPlatform(b *kilnv1.Build) bool { return len(b.GetSpec().GetPlatforms()) > 1 }

// family prints a multi-platform build's events and its children's.
type family struct {
	pr *progress.Printer

	mu    sync.Mutex
	steps map[childStep]uint32 // the number each child's step is printed as
	last  uint32

	kids      []*kiln.Build // once followed
	platforms []string      // kids' platforms
	printed   sync.WaitGroup
	// running is set once the build ran (its children did): queued
	// again, it is the index's turn.
	running bool
}

type childStep struct {
	id   string
	step uint32
}

// printFamily is printEvents for a multi-platform build: its events, and
// from its first state change on (the farm has split it by then), its
// children's.
func printFamily(ctx context.Context, b *kiln.Build, pr *progress.Printer) {
	ctx, stop := context.WithCancel(ctx)
	f := &family{pr: pr, steps: map[childStep]uint32{}}
	defer func() { stop(); f.printed.Wait() }()
	events := b.Events()
	for {
		var ev kiln.Event
		var ok bool
		select {
		case ev, ok = <-events:
		case <-ctx.Done():
			return
		}
		if !ok { // the log so far (kiln logs), or following failed
			f.drain(ctx)
			return
		}
		pb := ev.Proto()
		if f.kids == nil && (pb.GetState() != nil || pb.GetFinished() != nil) {
			f.follow(ctx, b)
		}
		// The children's lines come before the index's (a replayed log
		// reads the build's faster than its children's).
		switch st := pb.GetState().GetState(); {
		case st == kilnv1.BuildState_BUILD_STATE_QUEUED && f.running:
			f.drain(ctx)
		case st == kilnv1.BuildState_BUILD_STATE_RUNNING:
			f.running = true
		}
		if fin := pb.GetFinished(); fin != nil {
			f.drain(ctx)
			f.summary(fin)
		}
		// The index's attempt would start the printer's steps afresh,
		// dropping the children's: the build's own steps are none.
		pb = proto.CloneOf(pb)
		pb.Attempt = 0
		pr.Event(pb)
	}
}

// follow starts printing b's children's events, once the farm has named
// them.
func (f *family) follow(ctx context.Context, b *kiln.Build) {
	kids, err := b.Children(ctx)
	if err != nil || len(kids) == 0 {
		return // not split yet, or the farm did not answer: on the next event
	}
	f.kids = kids
	for _, k := range kids {
		platform := k.Record().GetSpec().GetPlatforms()[0]
		f.platforms = append(f.platforms, platform)
		f.printed.Add(1)
		go func() {
			defer f.printed.Done()
			events := k.Events()
			for {
				select {
				case ev, ok := <-events:
					if !ok {
						return
					}
					if pb := f.child(platform, ev.Proto()); pb != nil {
						f.pr.Event(pb)
					}
				case <-ctx.Done():
					return
				}
			}
		}()
	}
}

// drain waits until every child's events are printed, or childLinger.
func (f *family) drain(ctx context.Context) {
	done := make(chan struct{})
	go func() { f.printed.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(childLinger):
	case <-ctx.Done():
	}
}

// summary names each platform's image and the index, before the build's
// end is printed.
func (f *family) summary(fin *kilnv1.BuildFinished) {
	if fin.GetState() != kilnv1.BuildState_BUILD_STATE_SUCCEEDED {
		return
	}
	for i, k := range f.kids {
		rec := k.Record()
		digest := rec.GetResult().GetImageId()
		if p := rec.GetResult().GetPushed(); len(p) > 0 {
			digest = p[0].GetDigest()
		}
		f.pr.Infof("%s image %s (build %s)", f.platforms[i], digest, k.ID())
	}
	f.pr.Infof("image index %s of %s", fin.GetResult().GetImageId(), strings.Join(f.platforms, ", "))
}

// child is a child's event as the printer shows it among its parent's,
// or nil for those the parent's log tells already (state changes) or the
// summary does (its end).
func (f *family) child(platform string, ev *kilnv1.BuildEvent) *kilnv1.BuildEvent {
	out := proto.CloneOf(ev)
	out.Attempt = 0 // a child's retry goes on with the same numbers
	switch e := out.GetEvent().(type) {
	case *kilnv1.BuildEvent_StepStarted:
		s := e.StepStarted
		s.Step, s.Instruction = f.number(ev.GetBuildId(), s.GetStep()), childLabel(platform, s.GetStep(), s.GetTotal())+" "+s.GetInstruction()
		s.Total = 0
	case *kilnv1.BuildEvent_StepFinished:
		s := e.StepFinished
		s.Step, s.Instruction = f.number(ev.GetBuildId(), s.GetStep()), childLabel(platform, s.GetStep(), 0)+" "+s.GetInstruction()
	case *kilnv1.BuildEvent_Log:
		l := e.Log
		switch {
		case l.GetStep() != 0:
			l.Step = f.number(ev.GetBuildId(), l.GetStep())
			l.Text = fmt.Sprintf("#%d %s", l.Step, l.GetText())
		case progress.Internal(l):
			l.Text = progress.InternalPrefix + "[" + platform + "] " + strings.TrimPrefix(l.GetText(), progress.InternalPrefix)
		default:
			l.Text = "[" + platform + "] " + l.GetText()
		}
	case *kilnv1.BuildEvent_Pushed:
		out.Event = &kilnv1.BuildEvent_Log{Log: &kilnv1.LogLine{
			Text: fmt.Sprintf("[%s] pushed %s %s", platform, e.Pushed.GetTag(), e.Pushed.GetDigest()),
		}}
	default: // state changes, cache events, the end
		return nil
	}
	return out
}

// number is the number child id's step is printed as: the next one the
// first time it is seen.
func (f *family) number(id string, step uint32) uint32 {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := childStep{id, step}
	n, ok := f.steps[k]
	if !ok {
		f.last++
		n = f.last
		f.steps[k] = n
	}
	return n
}

// childLabel is buildx's label of a platform's step: "[linux/arm64 2/3]".
func childLabel(platform string, step, total uint32) string {
	if total == 0 {
		return fmt.Sprintf("[%s %d]", platform, step)
	}
	return fmt.Sprintf("[%s %d/%d]", platform, step, total)
}
