package agentproto_test

import (
	"errors"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/agentproto"
	"github.com/kilnbuild/kiln/services/buildstore"
	"github.com/kilnbuild/kiln/services/bus"
	"github.com/kilnbuild/kiln/services/bus/bustest"
)

func autoExport(ref, errMsg string) *kilnv1.BuildEvent {
	return &kilnv1.BuildEvent{Event: &kilnv1.BuildEvent_Cache{Cache: &kilnv1.CacheEvent{
		Kind: kilnv1.CacheEvent_KIND_EXPORT, Ref: ref, Type: "registry", Mode: "max", Automatic: true,
		Duration: durationpb.New(2100 * time.Millisecond), Error: errMsg,
	}}}
}

// TestAfterFinishAppendsTheAutomaticExport: the attempt that finished the
// build SUCCEEDED sends its automatic cache export after the finish; the
// log holds it after the finished event and the record names its ref as
// warm_cache_ref. A failed export lands too and leaves the ref alone; a
// log line after the finish is refused without writing.
func TestAfterFinishAppendsTheAutomaticExport(t *testing.T) {
	conn, store, c, b := setUp(t)
	at, _, err := c.Start(t.Context(), b, time.Minute, agentproto.Hooks{})
	if err != nil {
		t.Fatal(err)
	}
	if err := at.AfterFinish(t.Context(), autoExport("registry:5000/kiln-cache/t:l", "")); err == nil {
		t.Fatal("AfterFinish before Finish was sent")
	}
	if _, err := at.Finish(t.Context(), kilnv1.BuildState_BUILD_STATE_SUCCEEDED, &kilnv1.BuildResult{ImageId: "sha256:1"}, ""); err != nil {
		t.Fatal(err)
	}
	log := &kilnv1.BuildEvent{Event: &kilnv1.BuildEvent_Log{Log: &kilnv1.LogLine{Text: "late"}}}
	if err := at.AfterFinish(t.Context(), log); err == nil {
		t.Fatal("a log line after the finish was accepted")
	}
	if err := at.AfterFinish(t.Context(), autoExport("registry:5000/kiln-cache/t:l", "")); err != nil {
		t.Fatal(err)
	}
	if err := at.AfterFinish(t.Context(), autoExport("registry:5000/kiln-cache/t:other", "push refused")); err != nil {
		t.Fatal(err)
	}
	rec, _, err := store.Get(t.Context(), b.Id)
	if err != nil {
		t.Fatal(err)
	}
	if rec.GetResult().GetWarmCacheRef() != "registry:5000/kiln-cache/t:l" || rec.GetResult().GetImageId() != "sha256:1" {
		t.Fatalf("record's result: %v", rec.GetResult())
	}
	evs := bustest.EventLog(t, conn.JS, b.Id)
	if len(evs) != 4 || evs[1].GetFinished() == nil {
		t.Fatalf("log: %v", evs)
	}
	if c := evs[2].GetCache(); c.GetRef() != "registry:5000/kiln-cache/t:l" || c.GetError() != "" || !c.GetAutomatic() {
		t.Fatalf("event after the finish: %v", evs[2])
	}
	if c := evs[3].GetCache(); c.GetError() != "push refused" {
		t.Fatalf("failed export: %v", evs[3])
	}
}

// TestAfterFinishIsFenced: the automatic export of a build that failed or
// was cancelled is refused (ErrFenced) and writes nothing; so is one sent
// for attempt 1 by agent-a of a build agent-b finished at attempt 2.
func TestAfterFinishIsFenced(t *testing.T) {
	for _, state := range []kilnv1.BuildState{kilnv1.BuildState_BUILD_STATE_FAILED, kilnv1.BuildState_BUILD_STATE_CANCELLED} {
		t.Run(state.String(), func(t *testing.T) {
			conn, store, c, b := setUp(t)
			at, _, err := c.Start(t.Context(), b, time.Minute, agentproto.Hooks{})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := at.Finish(t.Context(), state, &kilnv1.BuildResult{}, ""); err != nil {
				t.Fatal(err)
			}
			unchanged(t, conn, store, b.Id, func() error {
				return at.AfterFinish(t.Context(), autoExport("registry:5000/kiln-cache/t:l", ""))
			})
		})
	}
	t.Run("another attempt's success", func(t *testing.T) {
		conn, store, _, _ := setUp(t)
		cb, err := agentproto.New(conn.NC, "agent-b")
		if err != nil {
			t.Fatal(err)
		}
		b := &kilnv1.Build{Id: buildstore.NewID(time.Now()), State: kilnv1.BuildState_BUILD_STATE_ASSIGNED, Agent: "agent-b", Attempt: 2}
		if _, err := store.Create(t.Context(), b); err != nil {
			t.Fatal(err)
		}
		at, _, err := cb.Start(t.Context(), b, time.Minute, agentproto.Hooks{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := at.Finish(t.Context(), kilnv1.BuildState_BUILD_STATE_SUCCEEDED, &kilnv1.BuildResult{}, ""); err != nil {
			t.Fatal(err)
		}
		unchanged(t, conn, store, b.Id, func() error {
			// agent-a's attempt 1, which lost the build, as its report.
			msg, err := bus.NewMsg(bus.ReportSubject("agent-a"), &kilnv1.AgentReport{
				BuildId: b.Id, Attempt: 1, Kind: kilnv1.AgentReportKind_AGENT_REPORT_KIND_EVENTS, Sequence: 9,
				Events: []*kilnv1.BuildEvent{autoExport("registry:5000/kiln-cache/t:l", "")},
			})
			if err != nil {
				return err
			}
			reply, err := conn.NC.RequestMsgWithContext(t.Context(), msg)
			if err != nil {
				return err
			}
			resp := &kilnv1.AgentReportReply{}
			if err := bus.Decode(reply.Data, resp); err != nil {
				return err
			}
			if resp.Fenced {
				return buildstore.ErrFenced
			}
			return errors.New(resp.Error)
		})
	})
}

// unchanged runs send, which must fail with ErrFenced, and checks that the
// build's record and log did not change.
func unchanged(t *testing.T, conn *bus.Conn, store *buildstore.Store, id string, send func() error) {
	t.Helper()
	_, rev, err := store.Get(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	before := len(bustest.EventLog(t, conn.JS, id))
	if err := send(); !errors.Is(err, buildstore.ErrFenced) {
		t.Fatalf("automatic export after the finish: %v, want ErrFenced", err)
	}
	rec, after, err := store.Get(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	if after != rev || rec.GetResult().GetWarmCacheRef() != "" {
		t.Fatalf("record changed: revision %d → %d, warm ref %q", rev, after, rec.GetResult().GetWarmCacheRef())
	}
	if n := len(bustest.EventLog(t, conn.JS, id)); n != before {
		t.Fatalf("log grew from %d to %d events", before, n)
	}
}
