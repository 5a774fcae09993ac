package agent

import (
	"context"
	"fmt"
	"time"

	"github.com/kilnbuild/kiln/agent/engine"
)

// runcProber is an engine that can probe its runc for CVE-2024-21626
// (*engine.Docker can).
type runcProber interface {
	ProbeRunc(ctx context.Context) (engine.RuncVerdict, string, error)
}

// runcProbeTimeout bounds one probe (an image import and two container
// starts).
const runcProbeTimeout = time.Minute

// runcState is what the agent learnt of its engine's runc. Guarded by
// Agent.mu.
type runcState struct {
	engine  string // the engine version it was learnt for; "" before
	refusal string // why the engine is refused; "" if it is not
}

// checkRunc probes the engine's runc for CVE-2024-21626 once per engine
// version and returns why the agent must not build on it, or nil. A
// vulnerable engine (or one the probe cannot read: another runtime) is
// out of rotation: the agent offers no builders and /readyz says why.
// A probe that failed is tried again at the next engine check.
func (a *Agent) checkRunc(ctx context.Context, info engine.Info) error {
	p, ok := a.cfg.Engine.(runcProber)
	if !ok || a.cfg.SkipRuncProbe {
		return nil
	}
	a.mu.Lock()
	st := a.runc
	a.mu.Unlock()
	if st.engine == info.ServerVersion && st.engine != "" {
		if st.refusal != "" {
			return fmt.Errorf("%s", st.refusal)
		}
		return nil
	}
	pctx, cancel := context.WithTimeout(ctx, runcProbeTimeout)
	defer cancel()
	verdict, detail, err := p.ProbeRunc(pctx)
	if err != nil {
		a.log.Error("could not probe the engine's runc for CVE-2024-21626; out of rotation until it can be", "err", err)
		err = fmt.Errorf("the engine's runc could not be probed for CVE-2024-21626 (tried again at the next engine check): %w", err)
		a.mu.Lock()
		a.runc = runcState{refusal: err.Error()} // no engine version: probed again next time
		a.mu.Unlock()
		return err
	}
	st = runcState{engine: info.ServerVersion}
	switch verdict {
	case engine.RuncVulnerable:
		st.refusal = "the docker engine's runc is vulnerable to CVE-2024-21626 (a container's working directory reached a leaked host directory): upgrade runc to 1.1.12 or later (or a distribution build with the fix); the agent builds nothing on this engine"
		a.log.Error("docker engine refused: its runc is vulnerable to CVE-2024-21626; out of rotation", "engine", info.ServerVersion, "probe", detail)
	case engine.RuncUnknown:
		st.refusal = "the docker engine's answer to the CVE-2024-21626 probe is not one runc gives (another runtime?); the agent builds nothing on it unless run with --skip-runc-probe"
		a.log.Error("docker engine refused: the CVE-2024-21626 probe could not tell whether its runc is fixed; out of rotation (see --skip-runc-probe)", "engine", info.ServerVersion, "probe", detail)
	default:
		a.log.Info("docker engine's runc is not vulnerable to CVE-2024-21626", "engine", info.ServerVersion, "probe", verdict.String())
	}
	a.mu.Lock()
	a.runc = st
	a.mu.Unlock()
	if st.refusal != "" {
		return fmt.Errorf("%s", st.refusal)
	}
	return nil
}

// runcRefusal is why the engine's runc is refused, "" if it is not.
func (a *Agent) runcRefusal() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.runc.refusal
}
