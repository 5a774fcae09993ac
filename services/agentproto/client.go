// Package agentproto is the agent's side of the agent↔scheduler protocol,
// the one implementation the agent, the dispatch benchmark's simulated
// agents and the tests speak:
//
//	agent ──kiln.sched.pull.<name>──────▶ scheduler   WorkOffer → WorkAssignment (long poll)
//	agent ──kiln.sched.withdraw.<name>──▶ schedulers  take the waiting pulls back
//	agent ──kiln.agent.report.<name>────▶ scheduler   AgentReport → AgentReportReply:
//	                                                   START, EVENTS…, RENEW, FINISH | HAND_BACK
//
// An agent never writes KV KILN_BUILDS or the KILN_EVENTS stream: its NATS
// credential allows neither. The scheduler that handles a report checks that
// the build is assigned to the agent the subject names, at the report's
// attempt, in a state that allows the change, and only then writes the
// record and publishes the events. A refused report answers fenced, which
// the client returns as buildstore.ErrFenced.
//
// One attempt's reports go one at a time (Attempt), so its events keep their
// order whichever scheduler instance handles each report.
//
// Worker is the loop every agent runs around the Client — slots pulling,
// heartbeats in KV KILN_AGENTS, an admin's hold, drain on stop — so the
// agent, the benchmarks' simulated agents and the tests differ only in
// how they run a build.
package agentproto

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/types/known/durationpb"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/buildstore"
	"github.com/kilnbuild/kiln/services/bus"
	"github.com/kilnbuild/kiln/services/telemetry"
)

// Client speaks the protocol for one agent name over one connection (with
// that agent's credential, when the farm requires them).
type Client struct {
	nc    *nats.Conn
	agent string
}

// New returns the client of agent on nc.
func New(nc *nats.Conn, agent string) (*Client, error) {
	if err := bus.CheckAgentName(agent); err != nil {
		return nil, err
	}
	return &Client{nc: nc, agent: agent}, nil
}

// Agent is the agent's name.
func (c *Client) Agent() string { return c.agent }

// pullMargin is how much longer than its wait a pull waits for the answer.
const pullMargin = 5 * time.Second

// Pull offers one free slot and waits up to wait (plus a margin) for the
// scheduler's answer: the builds assigned to the agent, maybe none.
func (c *Client) Pull(ctx context.Context, wait time.Duration) ([]*kilnv1.Build, error) {
	msg, err := bus.NewMsg(bus.PullSubject(c.agent), &kilnv1.WorkOffer{Agent: c.agent, FreeSlots: 1, Wait: durationpb.New(wait)})
	if err != nil {
		return nil, err
	}
	rctx, cancel := context.WithTimeout(ctx, wait+pullMargin)
	defer cancel()
	reply, err := c.nc.RequestMsgWithContext(rctx, msg)
	if err != nil {
		return nil, fmt.Errorf("work offer: %w", err)
	}
	resp := &kilnv1.WorkAssignment{}
	if err := bus.Decode(reply.Data, resp); err != nil {
		return nil, err
	}
	return resp.Builds, nil
}

// Withdraw takes back the agent's waiting pulls so the schedulers assign
// nothing more to it.
func (c *Client) Withdraw() error {
	msg, err := bus.NewMsg(bus.WithdrawSubject(c.agent), &kilnv1.WorkOffer{Agent: c.agent})
	if err == nil {
		err = c.nc.PublishMsg(msg)
	}
	if err == nil {
		err = c.nc.Flush()
	}
	if err != nil {
		return fmt.Errorf("withdraw pulls: %w", err)
	}
	return nil
}

// A report is tried again until its context ends while no scheduler
// answers, or one answers that it could not write: a NATS node lost takes
// seconds of leader election, during which the report's events cannot be
// stored, and dropping them would leave a hole in the build's log (the
// chaos test saw it). Only the fence ends it early.
const reportTry = 5 * time.Second // one try

// report sends r and returns the record the scheduler answered with. It
// tries again while no scheduler answers (one restarting, or none yet
// subscribed); a retried report is harmless (see AgentReport.sequence).
func (c *Client) report(ctx context.Context, r *kilnv1.AgentReport) (*kilnv1.Build, error) {
	msg, err := bus.NewMsg(bus.ReportSubject(c.agent), r)
	if err != nil {
		return nil, err
	}
	telemetry.InjectNATS(ctx, msg.Header)
	backoff := 50 * time.Millisecond
	for {
		tctx, cancel := context.WithTimeout(ctx, reportTry)
		reply, err := c.nc.RequestMsgWithContext(tctx, msg)
		cancel()
		if err == nil {
			resp := &kilnv1.AgentReportReply{}
			if err := bus.Decode(reply.Data, resp); err != nil {
				return nil, err
			}
			switch {
			case resp.Fenced:
				return nil, fmt.Errorf("%w: %s", buildstore.ErrFenced, resp.Error)
			case resp.Error == "":
				return resp.Build, nil
			}
			// The scheduler could not write (KV or the stream failed part
			// way): the same report again completes it; its events are
			// stored once (message ids from AgentReport.sequence).
			err = fmt.Errorf("report %s on build %s: %s", r.Kind, r.BuildId, resp.Error)
		} else if !errors.Is(err, nats.ErrNoResponders) && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, nats.ErrTimeout) {
			return nil, fmt.Errorf("report %s on build %s: %w", r.Kind, r.BuildId, err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("report %s on build %s: gave up: %w", r.Kind, r.BuildId, err)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}
