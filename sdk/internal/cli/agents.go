package cli

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/sdk/kiln"
)

var agentsHelp = helpText{
	usage: "kiln agents [OPTIONS]\n        kiln agents drain|undrain NAME [OPTIONS]",
	about: `List the farm's build agents (admin token): state, busy slots, engine,
storage driver, labels, cached lineages and when each was last heard from.

Commands:
  drain     Stop giving an agent new builds; its running builds finish
  undrain   Give a drained agent builds again`,
	examples: `kiln agents
kiln agents --format json | jq -r 'select(.state == "AGENT_STATE_READY") | .name'
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
	if fs.NArg() != 0 || (format != "table" && format != "json") {
		return a.usageErrorf("agents", `"kiln agents" takes no arguments and --format table|json`)
	}
	conn, err := cf.resolve(fs, a.lookupEnv())
	if err != nil {
		return a.usageErrorf("agents", "%v", err)
	}
	return a.callAgents(ctx, conn, format, func(ctx context.Context, c *kiln.Client) ([]*kilnv1.Agent, error) {
		return c.Agents(ctx)
	})
}

// callAgents dials the gateway, makes call and prints the agents it
// returns in format ("table" or "json": one line per agent).
func (a *App) callAgents(ctx context.Context, conn connection, format string, call func(context.Context, *kiln.Client) ([]*kilnv1.Agent, error)) int {
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
	if format == "json" {
		for _, ag := range agents {
			line, _ := protojson.Marshal(ag)
			fmt.Fprintln(a.Stdout, string(line))
		}
		return ExitOK
	}
	writeAgents(a.Stdout, agents, time.Now())
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
	if fs.NArg() != 1 || (format != "table" && format != "json") {
		return a.usageErrorf(name, `"kiln agents %s" takes one agent name (see "kiln agents") and --format table|json`, cmd)
	}
	conn, err := cf.resolve(fs, a.lookupEnv())
	if err != nil {
		return a.usageErrorf(name, "%v", err)
	}
	return a.callAgents(ctx, conn, format, func(ctx context.Context, c *kiln.Client) ([]*kilnv1.Agent, error) {
		ag, err := c.DrainAgent(ctx, fs.Arg(0), cmd == "undrain")
		if err != nil {
			return nil, err
		}
		return []*kilnv1.Agent{ag}, nil
	})
}

func writeAgents(w io.Writer, agents []*kilnv1.Agent, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSTATE\tSLOTS\tENGINE\tSTORAGE\tLABELS\tCACHED LINEAGES\tLAST SEEN")
	for _, ag := range agents {
		labels := make([]string, 0, len(ag.Labels))
		for k, v := range ag.Labels {
			labels = append(labels, k+"="+v)
		}
		sort.Strings(labels)
		seen := "-"
		if ag.LastSeen != nil {
			seen = now.Sub(ag.LastSeen.AsTime()).Round(time.Second).String() + " ago"
		}
		state := strings.ToLower(strings.TrimPrefix(ag.State.String(), "AGENT_STATE_"))
		fmt.Fprintf(tw, "%s\t%s\t%d/%d busy\t%s (API %s)\t%s\t%s\t%d\t%s\n", ag.Name, state, ag.BusySlots, ag.Slots,
			ag.EngineVersion, ag.EngineApiVersion, ag.StorageDriver, strings.Join(labels, ","), len(ag.GetCache().GetLineages()), seen)
	}
	tw.Flush()
}
