package main

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/kilnbuild/kiln/agent"
	"github.com/kilnbuild/kiln/bench/internal/benchkit"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/bus"
)

// The simulated agents keep the real agent's timings (agent.Default*).
const (
	pollWait       = agent.DefaultPollWait
	heartbeatEvery = agent.DefaultHeartbeatEvery
)

// pulled hears of every pull when it returned, with the builds it brought.
type pulled func(builds []*kilnv1.Build, at time.Time)

// fleet is the simulated agents, started spread over one heartbeat
// period so their heartbeats are spread as a real fleet's are.
type fleet struct {
	stop context.CancelFunc
	wg   sync.WaitGroup
}

func startFleet(ctx context.Context, url string, n, slots int, buildTime time.Duration, log *slog.Logger, got pulled) (*fleet, error) {
	// Connect first (in parallel), then start the loops spread out.
	conns := make([]*bus.Conn, n)
	errs := make([]error, n)
	var connecting sync.WaitGroup
	sem := make(chan struct{}, 32)
	for i := range n {
		connecting.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			conns[i], errs[i] = bus.Connect(ctx, url, fmt.Sprintf("scale-agent-%04d", i))
		})
	}
	connecting.Wait()
	f := &fleet{}
	closeAll := func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}
	agents := make([]*benchkit.SimAgent, n)
	for i := range n {
		if errs[i] != nil {
			closeAll()
			return nil, errs[i]
		}
		a, err := benchkit.NewSimAgent(ctx, conns[i], fmt.Sprintf("scale-%04d", i), slots, buildTime, log,
			func(_ string, _, answered time.Time, builds []*kilnv1.Build) { got(builds, answered) })
		if err != nil {
			closeAll()
			return nil, err
		}
		agents[i] = a
	}
	actx, stop := context.WithCancel(ctx)
	f.stop = func() { stop(); f.wg.Wait(); closeAll() }
	for i, a := range agents {
		f.wg.Go(func() {
			select {
			case <-time.After(time.Duration(i) * heartbeatEvery / time.Duration(n)):
			case <-actx.Done():
				return
			}
			a.Run(actx)
		})
	}
	return f, nil
}
