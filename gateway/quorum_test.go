package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/buildstore"
	"github.com/kilnbuild/kiln/services/bus"
	"github.com/kilnbuild/kiln/services/bus/bustest"
	"github.com/kilnbuild/kiln/services/logging/logtest"
)

// clusterGateway is a Gateway on a real three-node NATS cluster, every
// stream at three replicas, served over gRPC on a loopback listener, with
// a build context stored.
type clusterGateway struct {
	c      *bustest.Cluster
	conn   *bus.Conn
	g      *Gateway
	client kilnv1.BuildServiceClient
	ref    *kilnv1.ContextRef
	logs   *logtest.Buffer
}

func startClusterGateway(t *testing.T) *clusterGateway {
	t.Helper()
	ctx := t.Context()
	c := bustest.StartCluster(t, 3)
	conn := c.Conn(t, "gateway")
	l := bus.DefaultLimits
	l.Replicas = 3
	setupCtx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	if err := bus.Setup(setupCtx, conn.JS, l); err != nil {
		t.Fatal(err)
	}
	bustest.WaitReplicas(t, conn, 3)
	logs := &logtest.Buffer{}
	g, err := New(ctx, Config{Conn: conn, Logger: slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	_, cc := serveGateway(t, g, g.runAbandoned)
	return &clusterGateway{c: c, conn: conn, g: g, client: kilnv1.NewBuildServiceClient(cc), logs: logs,
		ref: storeDockerfile(t, conn, "FROM scratch\n")}
}

func (h *clusterGateway) startBuild(ctx context.Context, tag, key string) (*kilnv1.Build, error) {
	resp, err := h.client.StartBuild(ctx, &kilnv1.StartBuildRequest{
		Context: h.ref, Spec: &kilnv1.BuildSpec{Tags: []string{tag}}, IdempotencyKey: key,
	})
	if err != nil {
		return nil, err
	}
	return resp.Build, nil
}

func (h *clusterGateway) mustStart(t *testing.T, tag, key string) *kilnv1.Build {
	t.Helper()
	b, err := h.startBuild(t.Context(), tag, key)
	if err != nil {
		t.Fatalf("StartBuild %s: %v", tag, err)
	}
	return b
}

// buildIDs lists every build record's id, sorted.
func (h *clusterGateway) buildIDs(t *testing.T) []string {
	t.Helper()
	resp, err := h.client.ListBuilds(t.Context(), &kilnv1.ListBuildsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, b := range resp.Builds {
		ids = append(ids, b.Id)
	}
	slices.Sort(ids)
	return ids
}

// TestStartBuildWithoutQuorum: with two of the three NATS nodes down,
// StartBuild answers Unavailable saying why, and the refused requests leave
// no build that could run later; with the nodes back (same ports and
// stores) the same gateway, never restarted, starts builds again, and a
// retry with the refused request's idempotency key starts it once.
func TestStartBuildWithoutQuorum(t *testing.T) {
	defer func(d time.Duration) { natsWriteTimeout = d }(natsWriteTimeout)
	natsWriteTimeout = 5 * time.Second
	h := startClusterGateway(t)
	a := h.mustStart(t, "quorum:a", "")

	// The survivor leads every stream, so it accepts writes into its log
	// until it notices that its followers are gone: the case in which a
	// refused write may still be committed when they return.
	survivor := h.c.Nodes()[0]
	h.c.MoveLeaders(t, h.conn, survivor.Name)
	for _, nd := range h.c.Nodes()[1:] {
		nd.Stop()
	}

	for _, req := range []struct{ tag, key string }{{"quorum:b", ""}, {"quorum:c", "key-c"}} {
		ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
		b, err := h.startBuild(ctx, req.tag, req.key)
		cancel()
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("StartBuild %s without quorum: build %v, error %v; want Unavailable", req.tag, b, err)
		}
		if msg := status.Convert(err).Message(); !strings.Contains(msg, "no quorum") || !strings.Contains(msg, "retry") {
			t.Errorf("StartBuild %s without quorum: message %q does not say the cluster has no quorum and to retry", req.tag, msg)
		}
	}

	// The quorum lost between the claims and the record's write: the
	// record is in the survivor's log, not committed.
	lost := &kilnv1.Build{Id: buildstore.NewID(time.Now()), Tenant: LocalTenant, State: kilnv1.BuildState_BUILD_STATE_QUEUED,
		Spec: &kilnv1.BuildSpec{Tags: []string{"quorum:lost"}}, CreatedAt: timestamppb.Now()}
	createCtx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	_, err := h.g.builds.Create(createCtx, lost)
	cancel()
	if err == nil {
		t.Fatal("a record was created without quorum")
	}
	h.g.abandonStart(lost.Id)

	for _, nd := range h.c.Nodes()[1:] {
		if err := nd.Start(); err != nil {
			t.Fatal(err)
		}
	}
	h.c.WaitReady(t)
	bustest.WaitReplicas(t, h.conn, 3)

	d := h.mustStart(t, "quorum:d", "")
	waitAbandonedSettled(t, h.g)
	if _, _, err := h.g.builds.Get(t.Context(), lost.Id); !errors.Is(err, buildstore.ErrNotFound) {
		t.Errorf("the abandoned record %s: %v; want not found", lost.Id, err)
	}
	if got, want := h.buildIDs(t), sorted(a.Id, d.Id); !slices.Equal(got, want) {
		t.Fatalf("builds after quorum returned: %v; want only the two answered OK %v", got, want)
	}

	// The refused request with an idempotency key, retried: one build.
	c := h.mustStart(t, "quorum:c", "key-c")
	if again := h.mustStart(t, "quorum:c", "key-c"); again.Id != c.Id {
		t.Errorf("retry with key-c started %s, then %s", c.Id, again.Id)
	}
	if got, want := h.buildIDs(t), sorted(a.Id, c.Id, d.Id); !slices.Equal(got, want) {
		t.Fatalf("builds: %v; want %v", got, want)
	}
	// Nothing queued for a scheduler names another build.
	intake := intakeIDs(t, h.conn)
	for _, id := range intake {
		if id != a.Id && id != c.Id && id != d.Id {
			t.Errorf("intake message for build %s, which StartBuild refused", id)
		}
	}
	t.Logf("intake: %v; abandon log: %s", intake, abandonLog(h.logs))
}

func sorted(ids ...string) []string {
	slices.Sort(ids)
	return ids
}

// waitAbandonedSettled waits until the gateway has settled every build it
// abandoned.
func waitAbandonedSettled(t *testing.T, g *Gateway) {
	t.Helper()
	deadline := time.After(60 * time.Second)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for len(g.abandoned.pending()) > 0 {
		select {
		case <-deadline:
			t.Fatalf("abandoned builds %v not settled within 60s of quorum returning", g.abandoned.pending())
		case <-t.Context().Done():
			t.Fatal(t.Context().Err())
		case <-tick.C: // the settling has no event to wait on: look again
		}
	}
}

// intakeIDs are the build ids of the messages in KILN_REQUESTS (no
// scheduler consumes them here).
func intakeIDs(t *testing.T, conn *bus.Conn) []string {
	t.Helper()
	ctx := t.Context()
	s, err := conn.JS.Stream(ctx, bus.StreamRequests)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		req := &kilnv1.BuildRequested{}
		if err := bus.Decode(m.Data, req); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, req.BuildId)
	}
	return ids
}

// abandonLog is what the gateway logged about settling abandoned builds:
// whether the lost record was committed after all.
func abandonLog(logs *logtest.Buffer) string {
	var out []string
	for _, line := range strings.Split(logs.String(), "\n") {
		if strings.Contains(line, `"msg":"abandoned build was`) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

// TestUnavailableStatus: errors meaning the NATS cluster cannot serve are
// Unavailable with a message saying so; the call's own deadline stays
// DeadlineExceeded; other errors keep their codes.
func TestUnavailableStatus(t *testing.T) {
	live := context.Background()
	done, cancel := context.WithCancel(context.Background())
	cancel()
	for _, tc := range []struct {
		ctx  context.Context
		err  error
		want codes.Code
	}{
		{live, fmt.Errorf("create build: %w", jetstream.ErrNoStreamResponse), codes.Unavailable},
		{live, fmt.Errorf("create build: %w", &jetstream.APIError{Code: 503, ErrorCode: 10008, Description: "JetStream system temporarily unavailable"}), codes.Unavailable},
		{live, fmt.Errorf("read: %w", &jetstream.APIError{Code: 500, ErrorCode: 10118, Description: "stream is offline"}), codes.Unavailable},
		{live, fmt.Errorf("publish: %w", context.DeadlineExceeded), codes.Unavailable},
		{done, fmt.Errorf("publish: %w", context.DeadlineExceeded), codes.DeadlineExceeded},
		{live, fmt.Errorf("create build: %w", &jetstream.APIError{Code: 503, ErrorCode: 10023, Description: "insufficient resources"}), codes.Internal},
		{live, fmt.Errorf("read: %w", buildstore.ErrNotFound), codes.NotFound},
		{live, errors.New("something else"), codes.Internal},
	} {
		err := toStatus(tc.ctx, tc.err)
		if status.Code(err) != tc.want {
			t.Errorf("%v: %v, want %v", tc.err, status.Code(err), tc.want)
		}
		if tc.want == codes.Unavailable && !strings.Contains(status.Convert(err).Message(), "NATS cluster") {
			t.Errorf("%v: message %q does not name the NATS cluster", tc.err, status.Convert(err).Message())
		}
	}
}
