package bus_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kilnbuild/kiln/services/bus"
	"github.com/kilnbuild/kiln/services/bus/bustest"
)

// kilnStreams is how many streams bus.Setup makes: KILN_REQUESTS,
// KILN_EVENTS, seven KV buckets and two object stores (KILN_CAS,
// KILN_OUTPUTS).
const kilnStreams = 11

// retry calls op until it succeeds, fails other than by the cluster being
// unavailable (bus.IsUnavailable, or a NATS request deadline), or 60s pass:
// what a client does while a node is down and the cluster elects leaders.
func retry(t *testing.T, what string, op func(context.Context) error) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		err := op(ctx)
		cancel()
		if err == nil {
			return
		}
		if !bus.IsUnavailable(err) && !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("%s: %v", what, err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: cluster still unavailable after 60s: %v", what, err)
		}
		select { // retry back-off of an unavailable cluster
		case <-t.Context().Done():
			t.Fatalf("%s: %v", what, t.Context().Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// setup runs bus.Setup with replicas on conn.
func setup(t *testing.T, conn *bus.Conn, replicas int) {
	t.Helper()
	l := bus.DefaultLimits
	l.Replicas = replicas
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	if err := bus.Setup(ctx, conn.JS, l); err != nil {
		t.Fatalf("Setup with %d replicas: %v", replicas, err)
	}
}

// waitReplicas is bustest.WaitReplicas, and checks that the account has
// exactly the streams bus.Setup makes.
func waitReplicas(t *testing.T, conn *bus.Conn, replicas int) map[string]string {
	t.Helper()
	leaders := bustest.WaitReplicas(t, conn, replicas)
	if len(leaders) != kilnStreams {
		t.Fatalf("the account has %d streams, want the %d bus.Setup makes", len(leaders), kilnStreams)
	}
	return leaders
}

// farmData is a little of everything the farm keeps, written with R1.
type farmData struct {
	requestSeq, eventSeq uint64
}

var (
	recordValue = []byte("a build record")
	intakeValue = []byte("an intake message")
	eventValue  = []byte("an event")
	blobValue   = bytes.Repeat([]byte("blob "), 100_000) // several object-store chunks
)

func writeFarmData(t *testing.T, conn *bus.Conn) farmData {
	t.Helper()
	ctx := t.Context()
	var d farmData
	builds, err := conn.JS.KeyValue(ctx, bus.BucketBuilds)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := builds.Put(ctx, "b1", recordValue); err != nil {
		t.Fatal(err)
	}
	ack, err := conn.JS.Publish(ctx, bus.SubjectRequests, intakeValue)
	if err != nil {
		t.Fatal(err)
	}
	d.requestSeq = ack.Sequence
	if ack, err = conn.JS.Publish(ctx, bus.EventsSubject("b1"), eventValue); err != nil {
		t.Fatal(err)
	}
	d.eventSeq = ack.Sequence
	cas, err := conn.JS.ObjectStore(ctx, bus.BucketCAS)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cas.PutBytes(ctx, "blob", blobValue); err != nil {
		t.Fatal(err)
	}
	return d
}

// checkFarmData reads back what writeFarmData wrote, retrying while the
// cluster is unavailable.
func checkFarmData(t *testing.T, conn *bus.Conn, d farmData) {
	t.Helper()
	retry(t, "read the build record", func(ctx context.Context) error {
		builds, err := conn.JS.KeyValue(ctx, bus.BucketBuilds)
		if err != nil {
			return err
		}
		e, err := builds.Get(ctx, "b1")
		if err != nil {
			return err
		}
		if !bytes.Equal(e.Value(), recordValue) {
			t.Fatalf("build record reads %q, want %q", e.Value(), recordValue)
		}
		return nil
	})
	for _, m := range []struct {
		stream string
		seq    uint64
		want   []byte
	}{{bus.StreamRequests, d.requestSeq, intakeValue}, {bus.StreamEvents, d.eventSeq, eventValue}} {
		retry(t, "read "+m.stream, func(ctx context.Context) error {
			s, err := conn.JS.Stream(ctx, m.stream)
			if err != nil {
				return err
			}
			msg, err := s.GetMsg(ctx, m.seq)
			if err != nil {
				return err
			}
			if !bytes.Equal(msg.Data, m.want) {
				t.Fatalf("%s #%d reads %q, want %q", m.stream, m.seq, msg.Data, m.want)
			}
			return nil
		})
	}
	retry(t, "read the blob", func(ctx context.Context) error {
		cas, err := conn.JS.ObjectStore(ctx, bus.BucketCAS)
		if err != nil {
			return err
		}
		got, err := cas.GetBytes(ctx, "blob")
		if err != nil {
			return err
		}
		if !bytes.Equal(got, blobValue) {
			t.Fatalf("blob reads %d bytes, want %d", len(got), len(blobValue))
		}
		return nil
	})
}

// TestSetupRaisesReplicasInPlace: a farm set up with one replica on a
// three-node cluster, then set up again with three, has every stream,
// bucket and object store at three replicas, and what was written before
// is still there — read after stopping the node that alone held it.
// Setting up with one replica again lowers them in place.
func TestSetupRaisesReplicasInPlace(t *testing.T) {
	c := bustest.StartCluster(t, 3)
	conn := c.Conn(t, "setup")
	setup(t, conn, 1)
	r1 := waitReplicas(t, conn, 1)
	data := writeFarmData(t, conn)

	checkDirectGets(t, conn, true)
	setup(t, conn, 3)
	waitReplicas(t, conn, 3)
	checkFarmData(t, conn, data)
	checkDirectGets(t, conn, false)
	setup(t, conn, 3) // again, on buckets that exist: unchanged
	checkDirectGets(t, conn, false)

	// The builds bucket's only copy was on this node before: the record
	// read after it stops comes from a copy Setup made.
	holder := c.Node(r1["KV_"+bus.BucketBuilds])
	if holder == nil {
		t.Fatalf("no node named %q", r1["KV_"+bus.BucketBuilds])
	}
	holder.Stop()
	checkFarmData(t, conn, data)
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	c.WaitReady(t)
	waitReplicas(t, conn, 3)

	setup(t, conn, 1)
	waitReplicas(t, conn, 1)
	checkFarmData(t, conn, data)
	checkDirectGets(t, conn, true)
}

// checkDirectGets: with one replica every bucket allows direct gets; with
// more, only the agents' heartbeats do, so what the farm decides on is read
// from each bucket's stream leader, never from a follower behind it.
func checkDirectGets(t *testing.T, conn *bus.Conn, single bool) {
	t.Helper()
	for _, bucket := range []string{bus.BucketBuilds, bus.BucketIdempotency, bus.BucketInflight, bus.BucketLeader,
		bus.BucketAgents, bus.BucketSealNonces, bus.BucketCASUsage} {
		st, err := conn.JS.Stream(t.Context(), "KV_"+bucket)
		if err != nil {
			t.Fatal(err)
		}
		want := single || bucket == bus.BucketAgents
		if got := st.CachedInfo().Config.AllowDirect; got != want {
			t.Errorf("bucket %s: allow direct = %v, want %v", bucket, got, want)
		}
	}
}

// TestSetupRefusesMoreReplicasThanServers: a replica count the cluster
// cannot place is refused with a message naming the flag and the cluster's
// size, and changes nothing.
func TestSetupRefusesMoreReplicasThanServers(t *testing.T) {
	c := bustest.StartCluster(t, 3)
	conn := c.Conn(t, "setup")
	setup(t, conn, 3)
	l := bus.DefaultLimits
	l.Replicas = 5
	err := bus.Setup(t.Context(), conn.JS, l)
	if err == nil {
		t.Fatal("Setup with 5 replicas on 3 servers succeeded")
	}
	t.Logf("refused: %v", err)
	for _, want := range []string{"--nats-replicas 5", "3 servers"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	waitReplicas(t, conn, 3)
}

// TestSetupReplicasOnASingleServer: more than one replica on a server that
// is not clustered is refused, naming the flag.
func TestSetupReplicasOnASingleServer(t *testing.T) {
	conn := bustest.Conn(t) // set up with one replica
	l := bus.DefaultLimits
	l.Replicas = 3
	err := bus.Setup(t.Context(), conn.JS, l)
	if err == nil {
		s, _ := conn.JS.Stream(t.Context(), bus.StreamRequests)
		t.Fatalf("Setup with 3 replicas on one server succeeded (KILN_REQUESTS has %d)", s.CachedInfo().Config.Replicas)
	}
	t.Logf("refused: %v", err)
	if !strings.Contains(err.Error(), "--nats-replicas 3") {
		t.Errorf("error %q does not name the flag", err)
	}
}

// TestConnectionSurvivesNodeLoss: a connection given the three nodes' URLs
// keeps working — KV put and get, publish — after the node it is connected
// to shuts down: it reconnects to another.
func TestConnectionSurvivesNodeLoss(t *testing.T) {
	c := bustest.StartCluster(t, 3)
	reconnected := make(chan string, 4)
	conn := c.Conn(t, "client", nats.ReconnectHandler(func(nc *nats.Conn) { reconnected <- nc.ConnectedUrl() }))
	setup(t, conn, 3)
	waitReplicas(t, conn, 3)
	kv, err := conn.JS.KeyValue(t.Context(), bus.BucketBuilds)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(t.Context(), "before", []byte("1")); err != nil {
		t.Fatal(err)
	}

	var first *bustest.Node
	for _, nd := range c.Nodes() {
		if nd.URL() == conn.NC.ConnectedUrl() {
			first = nd
		}
	}
	if first == nil {
		t.Fatalf("connected to %s, none of %s", conn.NC.ConnectedUrl(), c.URL())
	}
	first.Stop()
	select {
	case url := <-reconnected:
		if url == first.URL() {
			t.Fatalf("reconnected to the stopped node %s", url)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("no reconnect within 60s of the connected node stopping")
	}

	// A service restarting now sets up as usual.
	setup(t, conn, 3)
	retry(t, "KV put after the node stopped", func(ctx context.Context) error {
		_, err := kv.Put(ctx, "after", []byte("2"))
		return err
	})
	for key, want := range map[string]string{"before": "1", "after": "2"} {
		retry(t, "KV get "+key, func(ctx context.Context) error {
			e, err := kv.Get(ctx, key)
			if err != nil {
				return err
			}
			if string(e.Value()) != want {
				t.Fatalf("%s = %q, want %q", key, e.Value(), want)
			}
			return nil
		})
	}
	retry(t, "publish after the node stopped", func(ctx context.Context) error {
		_, err := conn.JS.Publish(ctx, bus.EventsSubject("b2"), []byte("event"))
		return err
	})
}

// TestAckedWritesSurviveLeaderLoss: writes JetStream acknowledged on an R3
// stream are on a majority before the ack. The stream's leader is shut
// down right after the last ack, and the other two nodes still return
// every acknowledged message and key. Were an ack sent before the write
// reached a follower, the new leader (elected from the followers) would
// lack the latest writes.
func TestAckedWritesSurviveLeaderLoss(t *testing.T) {
	c := bustest.StartCluster(t, 3)
	conn := c.Conn(t, "writer")
	setup(t, conn, 3)
	leaders := waitReplicas(t, conn, 3)
	ctx := t.Context()

	// Events: the leader of KILN_EVENTS stops right after the last ack.
	const n = 200
	acked := map[uint64][]byte{}
	for i := range n {
		data := fmt.Appendf(nil, "event %d", i)
		ack, err := conn.JS.Publish(ctx, bus.EventsSubject("b1"), data)
		if err != nil {
			t.Fatal(err)
		}
		acked[ack.Sequence] = data
	}
	c.Node(leaders[bus.StreamEvents]).Stop()
	for seq, want := range acked {
		retry(t, fmt.Sprintf("read event #%d", seq), func(ctx context.Context) error {
			s, err := conn.JS.Stream(ctx, bus.StreamEvents)
			if err != nil {
				return err
			}
			if s.CachedInfo().Cluster.Leader == leaders[bus.StreamEvents] {
				return fmt.Errorf("old leader still reported: %w", nats.ErrTimeout)
			}
			m, err := s.GetMsg(ctx, seq)
			if err != nil {
				return err
			}
			if !bytes.Equal(m.Data, want) {
				t.Fatalf("event #%d reads %q, want %q", seq, m.Data, want)
			}
			return nil
		})
	}

	// Build records: restart that node, then stop the leader of
	// KV_KILN_BUILDS right after the last acknowledged put.
	if err := c.Node(leaders[bus.StreamEvents]).Start(); err != nil {
		t.Fatal(err)
	}
	c.WaitReady(t)
	leaders = waitReplicas(t, conn, 3)
	kv, err := conn.JS.KeyValue(ctx, bus.BucketBuilds)
	if err != nil {
		t.Fatal(err)
	}
	revs := map[string]uint64{}
	for i := range n {
		key := fmt.Sprintf("b%d", i)
		rev, err := kv.Put(ctx, key, []byte(key))
		if err != nil {
			t.Fatal(err)
		}
		revs[key] = rev
	}
	kvStream := "KV_" + bus.BucketBuilds
	c.Node(leaders[kvStream]).Stop()
	// Read through the new leader once both survivors are current, so a
	// direct get cannot be answered by a follower still catching up.
	retry(t, "a new, caught-up leader of "+kvStream, func(ctx context.Context) error {
		s, err := conn.JS.Stream(ctx, kvStream)
		if err != nil {
			return err
		}
		ci := s.CachedInfo().Cluster
		if ci.Leader == "" || ci.Leader == leaders[kvStream] {
			return fmt.Errorf("no new leader yet: %w", nats.ErrTimeout)
		}
		for _, p := range ci.Replicas {
			if p.Name != leaders[kvStream] && !p.Current {
				return fmt.Errorf("follower %s not current: %w", p.Name, nats.ErrTimeout)
			}
		}
		return nil
	})
	for key, rev := range revs {
		retry(t, "get "+key, func(ctx context.Context) error {
			e, err := kv.Get(ctx, key)
			if errors.Is(err, jetstream.ErrKeyNotFound) {
				t.Fatalf("acknowledged put of %s (revision %d) lost with the leader", key, rev)
			}
			if err != nil {
				return err
			}
			if e.Revision() != rev || string(e.Value()) != key {
				t.Fatalf("%s: revision %d %q, want revision %d %q", key, e.Revision(), e.Value(), rev, key)
			}
			return nil
		})
	}
}

// TestWrongRevisionOnR3: a KV compare-and-swap that lost is recognised on
// a replicated bucket too (buildstore.Update and the dispatcher retry on
// it); nats.go documents that a replicated stream may answer with another
// error code than one server, which IsWrongRevision also knows.
func TestWrongRevisionOnR3(t *testing.T) {
	c := bustest.StartCluster(t, 3)
	conn := c.Conn(t, "cas")
	setup(t, conn, 3)
	ctx := t.Context()
	kv, err := conn.JS.KeyValue(ctx, bus.BucketBuilds)
	if err != nil {
		t.Fatal(err)
	}
	rev, err := kv.Create(ctx, "b1", []byte("1"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Update(ctx, "b1", []byte("2"), rev); err != nil {
		t.Fatal(err)
	}
	_, err = kv.Update(ctx, "b1", []byte("3"), rev) // stale revision
	if err == nil || !bus.IsWrongRevision(err) {
		t.Fatalf("update at a stale revision: %v; want a wrong revision", err)
	}
	if _, err := kv.Create(ctx, "b1", []byte("4")); !bus.IsWrongRevision(err) {
		t.Fatalf("create of an existing key: %v; want a wrong revision", err)
	}
}
