package cli

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"
	"google.golang.org/protobuf/encoding/protojson"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/sdk/kiln"
)

// agents is `kiln agents`: the farm's agents, one per line; `kiln agents
// drain|undrain NAME` takes one out of rotation or puts it back.
func (a *App) agents(ctx context.Context, args []string) int {
	if len(args) > 0 && (args[0] == "drain" || args[0] == "undrain") {
		return a.drainAgent(ctx, args[0], args[1:])
	}
	fs := pflag.NewFlagSet("agents", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var cf connFlags
	cf.register(fs)
	format := fs.String("format", "table", `Output format: "table" or "json"`)
	if err := fs.Parse(args); err != nil {
		if err == pflag.ErrHelp {
			fmt.Fprintf(a.Stdout, "Usage:  kiln agents [OPTIONS]\n        kiln agents drain|undrain NAME [OPTIONS]\n\n"+
				"List the farm's build agents (admin token).\n\n"+
				"Commands:\n  drain     Stop giving an agent new builds; its running builds finish\n"+
				"  undrain   Give a drained agent builds again\n\nOptions:\n%s", fs.FlagUsages())
			return ExitOK
		}
		return a.usageErrorf("agents", "%v", err)
	}
	if fs.NArg() != 0 || (*format != "table" && *format != "json") {
		return a.usageErrorf("agents", `"kiln agents" takes no arguments and --format table|json`)
	}
	conn, err := cf.resolve(fs, a.lookupEnv())
	if err != nil {
		return a.usageErrorf("agents", "%v", err)
	}
	return a.callAgents(ctx, conn, *format, func(ctx context.Context, c *kiln.Client) ([]*kilnv1.Agent, error) {
		return c.Agents(ctx)
	})
}

// callAgents dials the gateway, makes call and prints the agents it
// returns in format ("table" or "json": one line per agent).
func (a *App) callAgents(ctx context.Context, conn connection, format string, call func(context.Context, *kiln.Client) ([]*kilnv1.Agent, error)) int {
	client, err := kiln.Dial(ctx, conn.gateway, conn.opts...)
	if err != nil {
		fmt.Fprintf(a.Stderr, "ERROR: %v\n", err)
		return ExitUsage
	}
	defer client.Close()
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	agents, err := call(cctx, client)
	if err != nil {
		code := ExitCode(err)
		if code == ExitUnreachable {
			fmt.Fprintf(a.Stderr, "ERROR: cannot reach the kiln gateway at %s: %v\n", conn.gateway, err)
		} else {
			fmt.Fprintf(a.Stderr, "ERROR: %v\n", err)
		}
		return code
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
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var cf connFlags
	cf.register(fs)
	format := fs.String("format", "table", `Output format: "table" or "json"`)
	if err := fs.Parse(args); err != nil {
		if err == pflag.ErrHelp {
			what := "Stop giving an agent new builds. Builds it is running finish; the agent\n" +
				"stays up and is listed as draining until 'kiln agents undrain NAME'.\n" +
				"Returns once the agent has acknowledged."
			if cmd == "undrain" {
				what = "Give a drained agent new builds again. Returns once the agent has\nacknowledged."
			}
			fmt.Fprintf(a.Stdout, "Usage:  kiln agents %s NAME [OPTIONS]\n\n%s\n\nNeeds an admin token (KILN_TOKEN or --token).\n\nOptions:\n%s", cmd, what, fs.FlagUsages())
			return ExitOK
		}
		return a.usageErrorf(name, "%v", err)
	}
	if fs.NArg() != 1 || (*format != "table" && *format != "json") {
		return a.usageErrorf(name, `"kiln agents %s" takes one agent name (see "kiln agents") and --format table|json`, cmd)
	}
	conn, err := cf.resolve(fs, a.lookupEnv())
	if err != nil {
		return a.usageErrorf(name, "%v", err)
	}
	return a.callAgents(ctx, conn, *format, func(ctx context.Context, c *kiln.Client) ([]*kilnv1.Agent, error) {
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
