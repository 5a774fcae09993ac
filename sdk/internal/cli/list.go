package cli

import (
	"context"
	"time"

	"github.com/spf13/pflag"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/sdk/kiln"
)

// defaultListLimit is how many builds `kiln ls` shows without --limit.
const defaultListLimit = 50

// listFlags holds the raw values of `kiln ls` flags.
type listFlags struct {
	conn       connFlags
	states     []string
	repository string
	tag        string
	agent      string
	since      string
	limit      int
	format     string
	tenant     string
}

func newListFlagSet(f *listFlags) *pflag.FlagSet {
	fs := pflag.NewFlagSet("ls", pflag.ContinueOnError)
	fs.SortFlags = false
	fs.StringArrayVar(&f.states, "state", nil, "Only builds in these states: queued, assigned, running, succeeded, failed, cancelled (comma-separated or repeated)")
	fs.StringVar(&f.repository, "repository", "", "Only builds of this source repository (as 'kiln build --repository' names it)")
	fs.StringVar(&f.tag, "tag", "", "Only builds with this tag (name:tag, as given to 'kiln build -t')")
	fs.StringVar(&f.agent, "agent", "", "Only builds that ran, or run, on this agent")
	fs.StringVar(&f.since, "since", "", "Only builds queued since then: a duration back from now (30m, 24h, 7d) or a time (2006-01-02, 2006-01-02T15:04:05Z)")
	fs.IntVarP(&f.limit, "limit", "n", defaultListLimit, "Show at most this many builds (0: all)")
	fs.StringVar(&f.format, "format", "table", `Output format: "table", "json" (one build record per line) or a Go template ('{{.ID}}'; "table {{.ID}}\t{{.State}}" for columns)`)
	fs.StringVar(&f.tenant, "tenant", "", "List this tenant's builds instead of yours (admin token)")
	f.conn.register(fs)
	return fs
}

var listHelp = helpText{
	usage: "kiln ls [OPTIONS]",
	about: `List your builds, newest first: id, state, source repository, tags,
agent, when queued, how long it ran and how many of its steps were cached.
The farm filters and pages the list; filters combine with AND.

--format takes a Go template as docker's does. Its fields: .ID, .Tenant,
.State, .Repository, .Tags, .Agent, .Queued, .CreatedAt, .Duration,
.Cached, .Digest, .ImageID, .Error, and .Record, the build's whole record
(.Record.Spec.Target). Functions: json, join, lower, upper, truncate and
short (a comma-separated list's first item and the count of the rest).
Records never carry secret values: sealed secrets and registry
credentials are shown by id and key id only.`,
	examples: `kiln ls
kiln ls --state running,queued
kiln ls --since 24h --repository gitlab.example.com/team/app
# ids of today's failed builds, one per line
kiln ls --state failed --since 24h --format '{{.ID}}'
kiln ls --format 'table {{.ID}}\t{{.State}}\t{{.Digest}}'
kiln ls --limit 0 --format json | jq -r .id`,
	exits: []exitStatus{{ExitOK, "listed (possibly nothing)"}, {ExitFailed, "an error"}, exitUsageStatus, exitUnreachableStatus},
}

// list is `kiln ls`.
func (a *App) list(ctx context.Context, args []string) int {
	var f listFlags
	fs := newListFlagSet(&f)
	if code, done := a.parseFlags("ls", fs, listHelp, args); done {
		return code
	}
	if fs.NArg() != 0 {
		return a.usageErrorf("ls", `"kiln ls" takes no arguments, got %q (filter with --state, --repository, --tag, --agent, --since)`, fs.Args())
	}
	filter, format, err := f.parse(time.Now())
	if err != nil {
		return a.usageErrorf("ls", "%v", err)
	}
	client, conn, code := a.dial(ctx, "ls", fs, &f.conn, "")
	if client == nil {
		return code
	}
	defer client.Close()
	var builds []*kilnv1.Build
	for b, err := range client.List(ctx, filter) {
		if err != nil {
			return reportFarmError(a.Stderr, conn.gateway, "", err)
		}
		builds = append(builds, b)
		if f.limit > 0 && len(builds) == f.limit {
			break
		}
	}
	if err := format.write(a.Stdout, builds, time.Now()); err != nil {
		return reportFarmError(a.Stderr, conn.gateway, "", err)
	}
	return ExitOK
}

// parse turns the flags (but the connection's) into the farm's filter and
// the output format, as of time now.
func (f *listFlags) parse(now time.Time) (kiln.ListFilter, listFormat, error) {
	var filter kiln.ListFilter
	if f.limit < 0 {
		return filter, listFormat{}, &usageError{msg: "--limit must be 0 (all) or more"}
	}
	states, err := parseStates(f.states)
	if err != nil {
		return filter, listFormat{}, err
	}
	filter = kiln.ListFilter{States: states, Repository: f.repository, Tag: f.tag, Agent: f.agent, Tenant: f.tenant}
	if f.since != "" {
		if filter.Since, err = parseSince(f.since, now); err != nil {
			return filter, listFormat{}, err
		}
	}
	if f.limit > 0 && f.limit < 1000 {
		filter.PageSize = int32(f.limit)
	}
	format, err := parseListFormat(f.format, defaultListTable)
	return filter, format, err
}
