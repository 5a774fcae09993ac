package cli

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

func TestWriteAgents(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	var buf bytes.Buffer
	f, err := parseRowFormat("table", defaultAgentsTable, agentRow{})
	if err != nil {
		t.Fatal(err)
	}
	agents := []*kilnv1.Agent{{
		Name: "builder-1", State: kilnv1.AgentState_AGENT_STATE_DRAINING, Slots: 2, BusySlots: 1,
		EngineVersion: "20.10.24", EngineApiVersion: "1.41", StorageDriver: "overlay2",
		Labels: map[string]string{"gpu": "none", "arch": "amd64"}, LastSeen: timestamppb.New(now.Add(-3 * time.Second)),
		Cache: &kilnv1.CacheSummary{Lineages: []string{"a", "b"}}, Version: "v1.2.3",
		Warnings: []string{"the engine clipped the output of build x", "another"},
	}}
	if err := writeAgents(&buf, f, agents, now); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("want a header and one row:\n%s", buf.String())
	}
	if !strings.HasSuffix(strings.TrimSpace(lines[0]), "WARNINGS") {
		t.Fatalf("header %q does not end with WARNINGS", lines[0])
	}
	for _, want := range []string{"builder-1", "draining", "1/2 busy", "20.10.24 (API 1.41)", "overlay2", "arch=amd64,gpu=none", "3s ago", "the engine clipped the output of build x; another"} {
		if !strings.Contains(lines[1], want) {
			t.Fatalf("row %q lacks %q", lines[1], want)
		}
	}
}

func TestAgentsFormats(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	agents := []*kilnv1.Agent{
		{Name: "builder-1", Arch: "amd64", Version: "v1.2.3", State: kilnv1.AgentState_AGENT_STATE_READY},
		{Name: "builder-2", Arch: "arm64", State: kilnv1.AgentState_AGENT_STATE_DRAINING},
	}
	for _, tt := range []struct{ format, want string }{
		{"{{.Name}} {{.State}}", "builder-1 ready\nbuilder-2 draining\n"},
		{"{{.Name}}:{{.Version}}:{{.Record.Arch}}", "builder-1:v1.2.3:amd64\nbuilder-2:-:arm64\n"},
		{"table {{.Name}}\\t{{.Version}}", "NAME        VERSION\nbuilder-1   v1.2.3\nbuilder-2   -\n"},
		{"table {{.Name}}\\t{{.Record.Arch}}", "builder-1   amd64\nbuilder-2   arm64\n"}, // a cell from the record: no header row
		{"json", `{"name":"builder-1","state":"AGENT_STATE_READY","arch":"amd64","version":"v1.2.3"}` + "\n" + `{"name":"builder-2","state":"AGENT_STATE_DRAINING","arch":"arm64"}` + "\n"},
	} {
		f, err := parseRowFormat(tt.format, defaultAgentsTable, agentRow{})
		if err != nil {
			t.Fatalf("%q: %v", tt.format, err)
		}
		var buf bytes.Buffer
		if err := writeAgents(&buf, f, agents, now); err != nil {
			t.Fatalf("%q: %v", tt.format, err)
		}
		if buf.String() != tt.want {
			t.Errorf("%q:\n%s\nwant:\n%s", tt.format, buf.String(), tt.want)
		}
	}
	if _, err := parseRowFormat("{{.Nope}}", defaultAgentsTable, agentRow{}); err == nil {
		t.Error("a field agents do not have was accepted")
	}
}

func TestAgentEngineColumn(t *testing.T) {
	for _, tt := range []struct {
		agent *kilnv1.Agent
		want  string
	}{
		{&kilnv1.Agent{EngineVersion: "20.10.24", EngineApiVersion: "1.41"}, "docker 20.10.24 (API 1.41)"},
		{&kilnv1.Agent{EngineKind: "docker", EngineVersion: "20.10.24", EngineApiVersion: "1.41"}, "docker 20.10.24 (API 1.41)"},
		{&kilnv1.Agent{EngineKind: "buildkit", EngineVersion: "v0.34.2", Features: []string{"cache-export-registry", "rootless"}}, "buildkit v0.34.2 (rootless)"},
		{&kilnv1.Agent{EngineKind: "buildkit"}, "buildkit -"},
	} {
		if got := engineColumn(tt.agent); got != tt.want {
			t.Errorf("engineColumn(%v) = %q, want %q", tt.agent, got, tt.want)
		}
	}
	f, err := parseRowFormat("{{.Features}}", defaultAgentsTable, agentRow{})
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	agents := []*kilnv1.Agent{{Features: []string{"cache-import", "push-in-build"}}, {}}
	if err := writeAgents(&buf, f, agents, time.Now()); err != nil {
		t.Fatal(err)
	}
	if buf.String() != "cache-import,push-in-build\n-\n" {
		t.Errorf("features column: %q", buf.String())
	}
}
