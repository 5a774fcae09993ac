package agent

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/bus"
)

// drainAnswerTimeout bounds the heartbeat written before answering a drain
// request; the gateway waits a little longer.
const drainAnswerTimeout = 5 * time.Second

// onDrainRequest serves an admin's drain or undrain (DrainAgent): it holds
// or releases the slots, writes the heartbeat that says so, and answers
// with that record. Without an answer the gateway reports the agent
// unavailable.
func (a *Agent) onDrainRequest(ctx context.Context, m *nats.Msg) {
	req := &kilnv1.DrainAgentRequest{}
	if err := bus.Decode(m.Data, req); err != nil || req.Name != a.cfg.Name || m.Reply == "" {
		a.log.Warn("ignoring malformed drain request", "err", err)
		return
	}
	if req.Undrain {
		a.worker.Hold(false)
	} else {
		a.worker.Hold(true)
	}
	hctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), drainAnswerTimeout)
	defer cancel()
	rec, err := a.worker.Heartbeat(hctx)
	if err != nil {
		a.log.Error("drain request: heartbeat not written; not answering", "undrain", req.Undrain, "err", err)
		return
	}
	if !req.Undrain {
		a.worker.Withdraw()
	}
	if err := a.answerDrain(m, rec); err != nil {
		a.log.Warn("answer drain request", "err", err)
	}
	if req.Undrain {
		a.log.Info("undrained by an admin: taking new builds")
	} else {
		a.log.Info("drained by an admin: no new builds; running builds go on", "busy_slots", a.worker.Busy())
	}
}

func (a *Agent) answerDrain(m *nats.Msg, rec *kilnv1.Agent) error {
	reply, err := bus.NewMsg(m.Reply, &kilnv1.DrainAgentResponse{Agent: rec})
	if err != nil {
		return err
	}
	if err := m.RespondMsg(reply); err != nil {
		return fmt.Errorf("answer on %s: %w", m.Reply, err)
	}
	return nil
}
