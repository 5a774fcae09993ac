package engine

import (
	"regexp"
	"strconv"
)

// BuildKit bounds what one step may print, per output stream: at most
// BUILDKIT_STEP_LOG_MAX_SIZE bytes in all (default 2 MiB) and
// BUILDKIT_STEP_LOG_MAX_SPEED bytes per second since the step began
// (default 200 KiB/s). It reads both once, from its daemon's environment
// (dockerd's for the engine's built-in BuildKit, buildkitd's for a
// standalone one); past a limit it drops the output and prints
//
//	[output clipped, log limit 2MiB reached]
//	[output clipped, log limit 200KiB/s reached]
//
// (moby/buildkit util/progress/logs/logs.go). The values are parsed as
// 32-bit integers, so one past 2147483647 is ignored (the default stays).
// -1 lifts a limit only since BuildKit v0.9: the BuildKit of Docker 20.10
// (v0.8) then clips every step at once ("log limit -1B reached"), so kiln
// sets a large value instead, which every version reads the same way.
const (
	StepLogMaxSizeEnv  = "BUILDKIT_STEP_LOG_MAX_SIZE"
	StepLogMaxSpeedEnv = "BUILDKIT_STEP_LOG_MAX_SPEED"
	// StepLogUnclipped is the value of both that kiln gives the engines
	// it starts: 1 GiB per step and stream, and 1 GiB per second, which no
	// step reaches before the farm's own log limit (TenantPolicy.log_max_bytes).
	StepLogUnclipped = 1 << 30
)

// StepLogEnv is the environment (KEY=VALUE) that keeps BuildKit from
// clipping a step's output: give it to the dockerd (or buildkitd) of every
// engine kiln starts.
func StepLogEnv() []string {
	v := strconv.Itoa(StepLogUnclipped)
	return []string{StepLogMaxSizeEnv + "=" + v, StepLogMaxSpeedEnv + "=" + v}
}

// clipNotice is BuildKit's line saying it dropped a step's output; the
// limit is as BuildKit writes it ("2MiB", "200KiB/s").
var clipNotice = regexp.MustCompile(`^\[output clipped, log limit (\S+) reached\]$`)

// parseClipNotice returns the limit a BuildKit clip notice names.
func parseClipNotice(line string) (limit string, ok bool) {
	m := clipNotice.FindStringSubmatch(line)
	if m == nil {
		return "", false
	}
	return m[1], true
}

// ClipSetting names the engine setting that lifts the limit a clip notice
// named: BUILDKIT_STEP_LOG_MAX_SPEED for a rate ("200KiB/s"),
// BUILDKIT_STEP_LOG_MAX_SIZE otherwise.
func ClipSetting(limit string) string {
	if len(limit) > 2 && limit[len(limit)-2:] == "/s" {
		return StepLogMaxSpeedEnv
	}
	return StepLogMaxSizeEnv
}
