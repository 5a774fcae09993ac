package cli

import (
	"context"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/sdk/kiln"
)

var agentsHelp = helpText{
	usage: "kiln agents [OPTIONS]\n        kiln agents drain|undrain NAME [OPTIONS]",
	about: `List the farm's build agents (admin token): state, busy slots, engine,
storage driver, labels, cached lineages, when each was last heard from and
what its operator should fix on its engine (warnings).

Commands:
  drain     Stop giving an agent new builds; its running builds finish
  undrain   Give a drained agent builds again`,
	examples: `kiln agents
kiln agents --format json | jq -r 'select(.state == "AGENT_STATE_READY") | .name'
kiln agents --format 'table {{.Name}}\t{{.Version}}\t{{.Record.Arch}}'
kiln agents drain builder-3`,
	exits: []exitStatus{{ExitOK, "listed"}, {ExitFailed, "an error"}, exitUsageStatus, exitUnreachableStatus},
}

// agents is `kiln agents`: the farm's agents, one per line; `kiln agents
// drain|undrain NAME` takes one out of rotation or puts it back.
func (a *App) agents(ctx context.Context, args []string) int {
	if len(args) > 0 && (args[0] == "drain" || args[0] == "undrain") {
		return a.drainAgent(ctx, args[0], args[1:])
	}
	var cf connFlags
	var format string
	fs := newAgentsFlagSet("agents", &cf, &format)
	if code, done := a.parseFlags("agents", fs, agentsHelp, args); done {
		return code
	}
	if fs.NArg() != 0 {
		return a.usageErrorf("agents", `"kiln agents" takes no arguments`)
	}
	f, err := parseRowFormat(format, defaultAgentsTable, newAgentRow(&kilnv1.Agent{}, time.Time{}))
	if err != nil {
		return a.usageErrorf("agents", "%v", err)
	}
	conn, err := cf.resolve(fs, a.lookupEnv())
	if err != nil {
		return a.usageErrorf("agents", "%v", err)
	}
	return a.callAgents(ctx, conn, f, func(ctx context.Context, c *kiln.Client) ([]*kilnv1.Agent, error) {
		return c.Agents(ctx)
	})
}

// callAgents dials the gateway, makes call and prints the agents it
// returns in format.
func (a *App) callAgents(ctx context.Context, conn connection, format listFormat, call func(context.Context, *kiln.Client) ([]*kilnv1.Agent, error)) int {
	client, err := kiln.Dial(ctx, conn.gateway, conn.opts...)
	if err != nil {
		return reportFarmError(a.Stderr, conn.gateway, "", err)
	}
	defer client.Close()
	cctx, cancel := context.WithTimeout(ctx, farmCallTimeout)
	defer cancel()
	agents, err := call(cctx, client)
	if err != nil {
		return reportFarmError(a.Stderr, conn.gateway, "", err)
	}
	if err := writeAgents(a.Stdout, format, agents, time.Now()); err != nil {
		fmt.Fprintf(a.Stderr, "ERROR: %v\n", err)
		return ExitFailed
	}
	return ExitOK
}

// drainAgent is `kiln agents drain|undrain NAME`.
func (a *App) drainAgent(ctx context.Context, cmd string, args []string) int {
	name := "agents " + cmd
	var cf connFlags
	var format string
	fs := newAgentsFlagSet(name, &cf, &format)
	h := helpText{
		usage: "kiln agents " + cmd + " NAME [OPTIONS]",
		about: `Stop giving an agent new builds. Builds it is running finish; the agent
stays up and is listed as draining until 'kiln agents undrain NAME'.
Returns once the agent has acknowledged.

Needs an admin token (KILN_TOKEN or --token).`,
		examples: "kiln agents " + cmd + " builder-3",
		exits:    []exitStatus{{ExitOK, "the agent acknowledged"}, {ExitFailed, "no such agent, or another error"}, exitUsageStatus, exitUnreachableStatus},
	}
	if cmd == "undrain" {
		h.about = `Give a drained agent new builds again. Returns once the agent has
acknowledged.

Needs an admin token (KILN_TOKEN or --token).`
	}
	if code, done := a.parseFlags(name, fs, h, args); done {
		return code
	}
	if fs.NArg() != 1 {
		return a.usageErrorf(name, `"kiln agents %s" takes one agent name (see "kiln agents")`, cmd)
	}
	f, err := parseRowFormat(format, defaultAgentsTable, newAgentRow(&kilnv1.Agent{}, time.Time{}))
	if err != nil {
		return a.usageErrorf(name, "%v", err)
	}
	conn, err := cf.resolve(fs, a.lookupEnv())
	if err != nil {
		return a.usageErrorf(name, "%v", err)
	}
	return a.callAgents(ctx, conn, f, func(ctx context.Context, c *kiln.Client) ([]*kilnv1.Agent, error) {
		ag, err := c.DrainAgent(ctx, fs.Arg(0), cmd == "undrain")
		if err != nil {
			return nil, err
		}
		return []*kilnv1.Agent{ag}, nil
	})
}

// defaultAgentsTable is the table `kiln agents` prints without --format.
const defaultAgentsTable = "table {{.Name}}\t{{.State}}\t{{.Slots}}\t{{.Engine}}\t{{.Storage}}\t{{.Labels}}\t{{.Lineages}}\t{{.LastSeen}}\t{{.Warnings}}"

// agentRow is one agent as a --format template sees it.
type agentRow struct {
	Name, State, Slots, Engine, Storage, Labels, Lineages, LastSeen, Version string
	// Features are what the agent's engine can do beyond building
	// (cache-export-registry, push-in-build, rootless, ...), ","-joined.
	Features string
	// Warnings are what the agent asks its operator to fix, "; "-joined.
	Warnings string
	// Record is the whole agent ({{.Record.Arch}}).
	Record *kilnv1.Agent
}

// agentHeader holds the column names of a `table` format's header.
var agentHeader = agentRow{
	Name: "NAME", State: "STATE", Slots: "SLOTS", Engine: "ENGINE", Storage: "STORAGE",
	Labels: "LABELS", Lineages: "CACHED LINEAGES", LastSeen: "LAST SEEN", Version: "VERSION", Warnings: "WARNINGS",
	Features: "FEATURES",
}

// newAgentRow formats ag for the listing at time now.
func newAgentRow(ag *kilnv1.Agent, now time.Time) agentRow {
	labels := make([]string, 0, len(ag.GetLabels()))
	for k, v := range ag.GetLabels() {
		labels = append(labels, k+"="+v)
	}
	sort.Strings(labels)
	seen := "-"
	if ag.GetLastSeen() != nil {
		seen = now.Sub(ag.GetLastSeen().AsTime()).Round(time.Second).String() + " ago"
	}
	return agentRow{
		Name:     ag.GetName(),
		State:    strings.ToLower(strings.TrimPrefix(ag.GetState().String(), "AGENT_STATE_")),
		Slots:    fmt.Sprintf("%d/%d busy", ag.GetBusySlots(), ag.GetSlots()),
		Engine:   engineColumn(ag),
		Storage:  orDash(ag.GetStorageDriver()),
		Labels:   orDash(strings.Join(labels, ",")),
		Lineages: fmt.Sprint(len(ag.GetCache().GetLineages())),
		LastSeen: seen,
		Version:  orDash(ag.GetVersion()),
		Warnings: orDash(strings.Join(ag.GetWarnings(), "; ")),
		Features: orDash(strings.Join(ag.GetFeatures(), ",")),
		Record:   ag,
	}
}

// engineColumn names an agent's engine: its kind and version, the Docker
// API version it speaks, and "rootless" for a rootless one, e.g.
// "docker 20.10.24 (API 1.41)" or "buildkit v0.34.2 (rootless)". Agents
// older than engine kinds advertise none: they drive Docker engines.
func engineColumn(ag *kilnv1.Agent) string {
	kind := ag.GetEngineKind()
	if kind == "" {
		kind = "docker"
	}
	var notes []string
	if api := ag.GetEngineApiVersion(); api != "" {
		notes = append(notes, "API "+api)
	}
	if slices.Contains(ag.GetFeatures(), "rootless") {
		notes = append(notes, "rootless")
	}
	out := kind + " " + orDash(ag.GetEngineVersion())
	if len(notes) > 0 {
		out += " (" + strings.Join(notes, ", ") + ")"
	}
	return out
}

// writeAgents prints agents in format f as of time now.
func writeAgents(w io.Writer, f listFormat, agents []*kilnv1.Agent, now time.Time) error {
	return f.writeRows(w, agentHeader, len(agents),
		func(i int) any { return newAgentRow(agents[i], now) },
		func(i int) proto.Message { return agents[i] })
}
