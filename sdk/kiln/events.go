package kiln

import (
	"time"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

// Event is one entry of a build's event log, as [Build.Events] delivers
// it. Its concrete type says what happened: *StateChanged, *Assigned,
// *LogLine, *StepStarted, *StepFinished, *Pushed or *Finished (the last
// event of every build). Proto returns the event as the farm sent it.
type Event interface {
	// Sequence is the event's 1-based position in its build's log:
	// gap-free, so a watch resumes from the last one seen + 1.
	Sequence() uint64
	// Time is when the farm recorded the event.
	Time() time.Time
	// Proto is the event as the farm sent it.
	Proto() *kilnv1.BuildEvent
}

// event is what every Event holds: the farm's event.
type event struct{ pb *kilnv1.BuildEvent }

func (e event) Sequence() uint64          { return e.pb.GetSequence() }
func (e event) Time() time.Time           { return e.pb.GetTime().AsTime() }
func (e event) Proto() *kilnv1.BuildEvent { return e.pb }

// StateChanged says the build record moved to State (other than ASSIGNED,
// which is an *Assigned event).
type StateChanged struct {
	event
	State   kilnv1.BuildState
	Agent   string
	Attempt uint32
	// Message says why, when the farm says (a requeue after a lost agent).
	Message string
}

// Assigned says the scheduler gave the build to Agent, for its Attempt'th
// try; Message says why that agent, when the farm says.
type Assigned struct {
	event
	Agent   string
	Attempt uint32
	Message string
}

// LogLine is one line of build output. Step is the 1-based Dockerfile
// step it belongs to (0: none, such as the farm's own lines).
type LogLine struct {
	event
	Step uint32
	Text string
}

// StepStarted says the engine began step Step of Total: Instruction.
type StepStarted struct {
	event
	Step, Total uint32
	Instruction string
}

// StepFinished says step Step completed, from the engine's cache when
// Cached.
type StepFinished struct {
	event
	Step        uint32
	Cached      bool
	Duration    time.Duration
	Instruction string
}

// Pushed says the build pushed Tag to its registry as Digest.
type Pushed struct {
	event
	Tag, Digest string
	Size        int64
}

// Finished is the last event of every build: how it ended.
type Finished struct {
	event
	State  kilnv1.BuildState
	Result *kilnv1.BuildResult
	// Error says why the build failed or was cancelled.
	Error string
	Agent string
	// TimedOut says the farm cancelled the build because it ran past its
	// timeout (State is CANCELLED).
	TimedOut bool
}

// newEvent types a farm event; an event of a kind this SDK does not know
// is a *StateChanged with the record's state unknown (UNSPECIFIED), so
// that its sequence still counts.
func newEvent(pb *kilnv1.BuildEvent) Event {
	e := event{pb}
	switch {
	case pb.GetLog() != nil:
		l := pb.GetLog()
		return &LogLine{event: e, Step: l.GetStep(), Text: l.GetText()}
	case pb.GetStepStarted() != nil:
		s := pb.GetStepStarted()
		return &StepStarted{event: e, Step: s.GetStep(), Total: s.GetTotal(), Instruction: s.GetInstruction()}
	case pb.GetStepFinished() != nil:
		s := pb.GetStepFinished()
		return &StepFinished{event: e, Step: s.GetStep(), Cached: s.GetCached(), Duration: s.GetDuration().AsDuration(), Instruction: s.GetInstruction()}
	case pb.GetPushed() != nil:
		p := pb.GetPushed()
		return &Pushed{event: e, Tag: p.GetTag(), Digest: p.GetDigest(), Size: p.GetSize()}
	case pb.GetFinished() != nil:
		f := pb.GetFinished()
		return &Finished{event: e, State: f.GetState(), Result: f.GetResult(), Error: f.GetError(), Agent: f.GetAgent(), TimedOut: f.GetTimedOut()}
	case pb.GetState().GetState() == kilnv1.BuildState_BUILD_STATE_ASSIGNED:
		s := pb.GetState()
		return &Assigned{event: e, Agent: s.GetAgent(), Attempt: s.GetAttempt(), Message: s.GetMessage()}
	default:
		s := pb.GetState()
		return &StateChanged{event: e, State: s.GetState(), Agent: s.GetAgent(), Attempt: s.GetAttempt(), Message: s.GetMessage()}
	}
}
