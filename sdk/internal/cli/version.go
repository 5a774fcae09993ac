package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"runtime"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"
	"google.golang.org/protobuf/encoding/protojson"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/version"
	"github.com/kilnbuild/kiln/sdk/kiln"
)

// farmCallTimeout bounds a command's single call to the farm.
const farmCallTimeout = 30 * time.Second

// versionFlags holds the raw values of `kiln version` flags.
type versionFlags struct {
	conn   connFlags
	client bool
	format string
}

func newVersionFlagSet(f *versionFlags) *pflag.FlagSet {
	fs := pflag.NewFlagSet("version", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.BoolVar(&f.client, "client", false, "Show only the client's version; ask the farm nothing")
	fs.StringVar(&f.format, "format", "text", `Output format: "text" or "json"`)
	f.conn.register(fs)
	return fs
}

var versionHelp = helpText{
	usage: "kiln version [OPTIONS]",
	about: `Show the kiln client's version, then the farm's: the gateway that answered,
the scheduler leader, and each agent with its engine (version, API version
and builders). When the farm cannot be reached, only the client's version
is printed, and the error goes to stderr. 'kiln --version' prints the
client's version alone.`,
	examples: `kiln version
kiln version --client
kiln version --format json | jq -r .farm.gatewayVersion`,
	exits: []exitStatus{
		{ExitOK, "printed the client's version and, without --client, the farm's"},
		{ExitFailed, "an error"},
		exitUsageStatus,
		{ExitUnreachable, "the gateway could not be reached (the client's version is printed all the same)"},
	},
}

// version is `kiln version`.
func (a *App) version(ctx context.Context, args []string) int {
	var f versionFlags
	fs := newVersionFlagSet(&f)
	if code, done := a.parseFlags("version", fs, versionHelp, args); done {
		return code
	}
	if fs.NArg() != 0 {
		return a.usageErrorf("version", `"kiln version" accepts no arguments`)
	}
	if f.format != "text" && f.format != "json" {
		return a.usageErrorf("version", `invalid --format %q: use text or json`, f.format)
	}
	if f.client {
		return a.printVersions(f.format, "", nil)
	}
	conn, err := f.conn.resolve(fs, a.lookupEnv())
	if err != nil {
		return a.usageErrorf("version", "%v", err)
	}
	client, err := kiln.Dial(ctx, conn.gateway, conn.opts...)
	if err != nil {
		a.printVersions(f.format, "", nil)
		return reportFarmError(a.Stderr, conn.gateway, "", err)
	}
	defer client.Close()
	cctx, cancel := context.WithTimeout(ctx, farmCallTimeout)
	defer cancel()
	info, err := client.FarmInfo(cctx)
	if err != nil {
		a.printVersions(f.format, "", nil)
		return reportFarmError(a.Stderr, conn.gateway, "", err)
	}
	return a.printVersions(f.format, conn.gateway, info)
}

// printVersions prints the client's version and, when info is not nil, the
// farm's at gateway, in format ("text" or "json").
func (a *App) printVersions(format, gateway string, info *kilnv1.GetFarmInfoResponse) int {
	if format == "json" {
		out := map[string]any{"client": map[string]string{
			"version": clientVersion(), "go": runtime.Version(), "os": runtime.GOOS, "arch": runtime.GOARCH,
		}}
		if info != nil {
			raw, err := protojson.Marshal(info)
			if err != nil {
				fmt.Fprintf(a.Stderr, "ERROR: encoding the farm's versions: %v\n", err)
				return ExitFailed
			}
			out["gateway"] = gateway
			out["farm"] = json.RawMessage(raw)
		}
		// Marshal compacts the raw message: protojson's random spaces go.
		line, err := json.Marshal(out)
		if err != nil {
			fmt.Fprintf(a.Stderr, "ERROR: encoding versions: %v\n", err)
			return ExitFailed
		}
		fmt.Fprintf(a.Stdout, "%s\n", line)
		return ExitOK
	}
	fmt.Fprintln(a.Stdout, versionString())
	if info != nil {
		writeFarmVersions(a.Stdout, gateway, info)
	}
	return ExitOK
}

// writeFarmVersions writes the farm's versions as a table: the gateway,
// the scheduler, then the agents by name.
func writeFarmVersions(w io.Writer, gateway string, info *kilnv1.GetFarmInfoResponse) {
	fmt.Fprintf(w, "Farm at %s:\n", gateway)
	tw := tabwriter.NewWriter(w, 0, 4, 3, ' ', 0)
	fmt.Fprintln(tw, "  PART\tNAME\tVERSION\tENGINE")
	fmt.Fprintf(tw, "  gateway\t-\t%s\t-\n", orDash(info.GetGatewayVersion()))
	sched := info.GetSchedulerVersion()
	if sched == "" {
		sched = "- (no scheduler leads)"
	}
	fmt.Fprintf(tw, "  scheduler\t-\t%s\t-\n", sched)
	agents := slices.Clone(info.GetAgents())
	slices.SortFunc(agents, func(x, y *kilnv1.Agent) int { return strings.Compare(x.GetName(), y.GetName()) })
	for _, ag := range agents {
		fmt.Fprintf(tw, "  agent\t%s\t%s\t%s\n", ag.GetName(), orDash(ag.GetVersion()), engineText(ag))
	}
	tw.Flush()
}

// engineText describes an agent's engine: "20.10.24 (API 1.41; buildkit,
// classic)".
func engineText(ag *kilnv1.Agent) string {
	if ag.GetEngineVersion() == "" {
		return "-"
	}
	s := ag.GetEngineVersion()
	var detail []string
	if v := ag.GetEngineApiVersion(); v != "" {
		detail = append(detail, "API "+v)
	}
	var builders []string
	for _, b := range ag.GetBuilders() {
		builders = append(builders, strings.ToLower(strings.TrimPrefix(b.String(), "BUILDER_")))
	}
	if len(builders) > 0 {
		detail = append(detail, strings.Join(builders, ", "))
	}
	if len(detail) > 0 {
		s += " (" + strings.Join(detail, "; ") + ")"
	}
	return s
}

// clientVersion is this kiln's version, the one every kiln binary reports
// (proto/version: set at link time, else the module's, else "dev").
func clientVersion() string { return version.String() }

func versionString() string {
	return fmt.Sprintf("kiln version %s (%s, %s/%s)", clientVersion(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
