package agent

import (
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/kilnbuild/kiln/agent/engine"
	"github.com/kilnbuild/kiln/agent/enginetest"
)

// TestRealEngineRuncIsAccepted: the dev engine's runc (Debian's
// 1.1.5+ds1-1+deb12u1, fixed) passes the probe; the agent offers its
// builders and is ready.
func TestRealEngineRuncIsAccepted(t *testing.T) {
	a := &Agent{cfg: Config{Name: "a1", Engine: enginetest.Docker(t)}, log: slog.Default()}
	a.checkEngine(context.Background())
	if err := a.Ready(context.Background()); err != nil {
		t.Fatalf("Ready: %v", err)
	}
	if len(a.builders()) == 0 {
		t.Fatal("no builders offered")
	}
}

// vulnerableEngine answers Info like an engine and the runc probe like a
// vulnerable runc: a fault the real engine here (fixed) cannot produce.
type vulnerableEngine struct {
	Engine
	verdict engine.RuncVerdict
}

func (vulnerableEngine) Info(context.Context) (engine.Info, error) {
	return engine.Info{ServerVersion: "20.10.24", Builders: []string{"buildkit", "classic"}}, nil
}

func (e vulnerableEngine) ProbeRunc(context.Context) (engine.RuncVerdict, string, error) {
	return e.verdict, `OCI runtime create failed: exec: "/kiln-runc-probe-no-such-command": stat: no such file or directory`, nil
}

func TestVulnerableRuncTakesTheAgentOutOfRotation(t *testing.T) {
	for _, tt := range []struct {
		verdict engine.RuncVerdict
		skip    bool
		refused string
	}{
		{engine.RuncVulnerable, false, "vulnerable to CVE-2024-21626"},
		{engine.RuncUnknown, false, "--skip-runc-probe"},
		{engine.RuncVulnerable, true, ""},
		{engine.RuncFixed, false, ""},
		{engine.RuncNoLeak, false, ""},
	} {
		t.Run(tt.verdict.String(), func(t *testing.T) {
			a := &Agent{cfg: Config{Name: "a1", Engine: vulnerableEngine{verdict: tt.verdict}, SkipRuncProbe: tt.skip}, log: slog.Default()}
			a.checkEngine(context.Background())
			err := a.Ready(context.Background())
			if tt.refused == "" {
				if err != nil || len(a.builders()) != 2 || !a.healthy.Load() {
					t.Fatalf("Ready %v, builders %v, healthy %v; want ready with both builders", err, a.builders(), a.healthy.Load())
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.refused) {
				t.Fatalf("Ready = %v, want it to say %q", err, tt.refused)
			}
			if len(a.builders()) != 0 || a.healthy.Load() {
				t.Fatalf("builders %v, healthy %v: want none offered, unhealthy", a.builders(), a.healthy.Load())
			}
		})
	}
}
