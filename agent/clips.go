package agent

import (
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/kilnbuild/kiln/agent/engine"
)

// engineClips is what the agent saw of its engine clipping builds' output
// (BuildKit's step log limits, see engine.StepLogEnv): one warning per
// engine setting for the agent's heartbeat (Agent.warnings, which `kiln
// agents` shows), naming the setting that lifts it. BuildKit reads its
// limits once, when its daemon starts, so a warning lasts until the engine
// is seen to come back after not answering (a restart) or the agent
// restarts. Safe for concurrent use.
type engineClips struct {
	mu   sync.Mutex
	seen map[string]clip // by setting
}

// clip is the last time a build's output was clipped at one limit.
type clip struct {
	limit, buildID string
	at             time.Time
}

// note records that the engine clipped build buildID's output at limit.
func (c *engineClips) note(buildID, limit string, at time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.seen == nil {
		c.seen = map[string]clip{}
	}
	c.seen[engine.ClipSetting(limit)] = clip{limit: limit, buildID: buildID, at: at}
}

// reset forgets what was seen: the engine restarted, perhaps with its
// limits lifted.
func (c *engineClips) reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seen = nil
}

// warnings says, per setting (in name order), what was clipped last and
// how to lift it.
func (c *engineClips) warnings() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	settings := make([]string, 0, len(c.seen))
	for setting := range c.seen {
		settings = append(settings, setting)
	}
	sort.Strings(settings)
	out := make([]string, 0, len(settings))
	for _, setting := range settings {
		cl := c.seen[setting]
		out = append(out, fmt.Sprintf("the engine clipped the output of build %s at BuildKit's step log limit %s (%s): restart its dockerd with %s=%d in its environment to keep builds' full logs",
			cl.buildID, cl.limit, cl.at.UTC().Format(time.RFC3339), setting, engine.StepLogUnclipped))
	}
	return out
}

// clipLine is the line a build's log gets where the engine first clipped
// its output at one limit: for the build's author, who sees output go
// missing, and names what the farm's operator must change.
func clipLine(agent, limit string) string {
	return fmt.Sprintf("[kiln] the engine of agent %q clipped this step's output at BuildKit's step log limit (%s): what the step printed past it is lost. "+
		"The farm's operator lifts the limit by starting that engine's dockerd with %s=%d in its environment.",
		agent, limit, engine.ClipSetting(limit), engine.StepLogUnclipped)
}
