package progress

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"time"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

// The rawjson types are BuildKit's SolveStatus with the JSON field names
// of github.com/moby/buildkit/client (graph.go), which `buildctl --progress
// rawjson` prints one a line; kiln's SDK does not depend on BuildKit, so
// they are written out here, with only the fields kiln fills.
type (
	solveStatus struct {
		Vertexes []*rawVertex `json:"vertexes,omitempty"`
		Logs     []*vertexLog `json:"logs,omitempty"`
	}
	rawVertex struct {
		Digest    string     `json:"digest,omitempty"`
		Name      string     `json:"name,omitempty"`
		Started   *time.Time `json:"started,omitempty"`
		Completed *time.Time `json:"completed,omitempty"`
		Cached    bool       `json:"cached,omitempty"`
		Error     string     `json:"error,omitempty"`
	}
	vertexLog struct {
		Vertex    string    `json:"vertex,omitempty"`
		Stream    int       `json:"stream,omitempty"`
		Data      []byte    `json:"data,omitempty"`
		Timestamp time.Time `json:"timestamp"`
	}
)

// rawEncoder synthesizes SolveStatus messages from kiln's events: each
// step is a vertex named as BuildKit names it ("[2/3] RUN make"), started
// by its started event and completed (cached or not) by its finished one,
// its log lines the vertex's stdout; the farm's own lines (queued,
// assigned, the engine's lines of no step) are the logs of a vertex
// "[kiln] farm" that lasts the whole build, and each pushed tag a vertex
// "[kiln] pushing TAG". A failed build's unfinished steps complete with
// its error. Vertex digests are derived from the build, attempt and step,
// so one vertex keeps its digest across messages as BuildKit's do.
type rawEncoder struct {
	enc *json.Encoder
	// attempt is the current attempt; steps its vertices by step.
	attempt uint32
	steps   map[uint32]*rawVertex
	farm    *rawVertex
}

func newRawEncoder(w io.Writer) *rawEncoder {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	return &rawEncoder{enc: enc, steps: map[uint32]*rawVertex{}}
}

// vertexDigest names a vertex of a build: a sha256 digest of its key.
func vertexDigest(buildID string, attempt uint32, key string) string {
	sum := sha256.Sum256(fmt.Appendf(nil, "kiln/%s/%d/%s", buildID, attempt, key))
	return "sha256:" + hex.EncodeToString(sum[:])
}

// event writes the SolveStatus of one event, if it implies one.
func (r *rawEncoder) event(ev *kilnv1.BuildEvent) error {
	at := time.Now()
	if ev.GetTime() != nil {
		at = ev.GetTime().AsTime()
	}
	id := ev.GetBuildId()
	if ev.GetAttempt() > r.attempt {
		r.attempt = ev.GetAttempt()
		clear(r.steps)
		r.farm = nil
	}
	var st solveStatus
	farm := func() *rawVertex {
		if r.farm == nil {
			r.farm = &rawVertex{Digest: vertexDigest(id, r.attempt, "farm"), Name: "[kiln] farm", Started: &at}
			st.Vertexes = append(st.Vertexes, r.farm)
		}
		return r.farm
	}
	farmLog := func(text string) {
		st.Logs = append(st.Logs, &vertexLog{Vertex: farm().Digest, Stream: 1, Data: []byte(text + "\n"), Timestamp: at})
	}
	switch e := ev.GetEvent().(type) {
	case *kilnv1.BuildEvent_State:
		s := e.State
		text := stateName(s.GetState())
		if s.GetAgent() != "" {
			text += fmt.Sprintf(" on agent %q", s.GetAgent())
		}
		text += fmt.Sprintf(" (attempt %d)", s.GetAttempt())
		if s.GetMessage() != "" {
			text += ": " + s.GetMessage()
		}
		farmLog(text)
	case *kilnv1.BuildEvent_StepStarted:
		s := e.StepStarted
		v := &rawVertex{
			Digest:  vertexDigest(id, r.attempt, fmt.Sprintf("step/%d", s.GetStep())),
			Name:    (&step{n: s.GetStep(), total: s.GetTotal()}).label() + " " + s.GetInstruction(),
			Started: &at,
		}
		r.steps[s.GetStep()] = v
		st.Vertexes = append(st.Vertexes, v)
	case *kilnv1.BuildEvent_Log:
		l := e.Log
		text := l.GetText()
		if len(text) == 0 || text[len(text)-1] != '\n' {
			text += "\n"
		}
		v := r.steps[l.GetStep()]
		if l.GetStep() == 0 || v == nil {
			v = farm()
		}
		st.Logs = append(st.Logs, &vertexLog{Vertex: v.Digest, Stream: 1, Data: []byte(text), Timestamp: at})
	case *kilnv1.BuildEvent_StepFinished:
		f := e.StepFinished
		v := r.steps[f.GetStep()]
		if v == nil {
			v = &rawVertex{
				Digest: vertexDigest(id, r.attempt, fmt.Sprintf("step/%d", f.GetStep())),
				Name:   fmt.Sprintf("[%d] %s", f.GetStep(), f.GetInstruction()),
			}
			r.steps[f.GetStep()] = v
		}
		started := at.Add(-f.GetDuration().AsDuration())
		if v.Started == nil {
			v.Started = &started
		}
		v.Completed, v.Cached = &at, f.GetCached()
		st.Vertexes = append(st.Vertexes, v)
	case *kilnv1.BuildEvent_Pushed:
		p := e.Pushed
		st.Vertexes = append(st.Vertexes, &rawVertex{
			Digest: vertexDigest(id, r.attempt, "push/"+p.GetTag()),
			Name:   "[kiln] pushing " + p.GetTag(), Started: &at, Completed: &at,
		})
		farmLog(fmt.Sprintf("pushed %s %s", p.GetTag(), p.GetDigest()))
	case *kilnv1.BuildEvent_Cache:
		farmLog(cacheLine(e.Cache))
	case *kilnv1.BuildEvent_Finished:
		f := e.Finished
		var errText string
		if f.GetState() != kilnv1.BuildState_BUILD_STATE_SUCCEEDED {
			errText = failureReason(id, f)
		}
		for _, n := range slices.Sorted(maps.Keys(r.steps)) {
			if v := r.steps[n]; v.Completed == nil {
				v.Completed, v.Error = &at, errText
				st.Vertexes = append(st.Vertexes, v)
			}
		}
		farmLog("build " + id + " " + stateName(f.GetState()))
		r.farm.Completed, r.farm.Error = &at, errText
		if !slices.Contains(st.Vertexes, r.farm) {
			st.Vertexes = append(st.Vertexes, r.farm)
		}
	default:
		return nil
	}
	return r.enc.Encode(&st)
}
