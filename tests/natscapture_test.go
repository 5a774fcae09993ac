package tests

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kilnbuild/kiln/services/bus"
)

// natsCapture records the NATS traffic of a kilnd, as far as the
// credentials kilnd keeps in <data-dir>/nats-creds let a client see it.
//
// No role may subscribe to ">". What the capture hears instead:
//   - every subject a role subscribes to: the inboxes (_INBOX.>, which
//     carry the replies to the gateway's and the scheduler's requests,
//     JetStream API answers and consumer deliveries included), the agent's
//     inbox (the scheduler's answers to it: assigned builds, report
//     acknowledgements), the agent's pulls, withdrawals and reports, the
//     cancellations and the CAS deletion announcements;
//   - every message of the JetStream streams (the event log, each KV
//     bucket and the CAS object store), read by ordered consumers from the
//     stream's first message, so a KV revision overwritten later is heard
//     too if it lived long enough to be delivered. The intake stream
//     KILN_REQUESTS is a work queue: a second consumer would take builds
//     from the scheduler, so its messages are heard where the scheduler's
//     pulls deliver them (its inbox, under _INBOX.>).
//
// What it cannot hear: the request bodies of JetStream API calls
// ($JS.API.>: no role may subscribe there; they carry keys and
// configurations, the values they store are in the streams).
type natsCapture struct {
	mu   sync.Mutex // guards msgs
	msgs []capturedMsg
}

// capturedMsg is one message heard: on a core subscription or a stream.
type capturedMsg struct {
	via, subject string
	header       []byte // "key: value" lines
	data         []byte
}

// captureNATS starts capturing k's NATS traffic; it stops when the test
// ends. k's agent is the one kilnd runs (--name e2e-agent).
func captureNATS(t *testing.T, k *kilnd) *natsCapture {
	t.Helper()
	c := &natsCapture{}
	creds := filepath.Join(k.dataDir, "data", "nats-creds")
	connect := func(seed string) *nats.Conn {
		opt, err := nats.NkeyOptionFromSeed(filepath.Join(creds, seed))
		if err != nil {
			t.Fatal(err)
		}
		nc, err := nats.Connect(k.addrs.NATS, opt, nats.Name("e2e-capture "+seed))
		if err != nil {
			t.Fatalf("connect with %s: %v", seed, err)
		}
		t.Cleanup(nc.Close)
		return nc
	}
	gw, sched, agent := connect("gateway.nk"), connect("scheduler.nk"), connect("agent-e2e-agent.nk")

	for nc, subjects := range map[*nats.Conn][]string{
		gw:    {"_INBOX.>", bus.SubjectCASDeleted},
		sched: {bus.PullSubject(">"), bus.WithdrawSubject(">"), bus.ReportSubject(">")},
		agent: {bus.AgentInboxPrefix("e2e-agent") + ".>", bus.CancelSubject("*")},
	} {
		for _, subject := range subjects {
			if _, err := nc.Subscribe(subject, func(m *nats.Msg) { c.add("subscription "+subject, m.Subject, m.Header, m.Data) }); err != nil {
				t.Fatalf("subscribe %s: %v", subject, err)
			}
		}
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
		if err := nc.LastError(); err != nil {
			t.Fatalf("subscriptions: %v", err)
		}
	}

	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	js, err := jetstream.New(gw)
	if err != nil {
		t.Fatal(err)
	}
	for _, stream := range []string{bus.StreamEvents, "KV_" + bus.BucketBuilds, "KV_" + bus.BucketIdempotency, "KV_" + bus.BucketInflight,
		"KV_" + bus.BucketSealNonces, "KV_" + bus.BucketCASUsage, "KV_" + bus.BucketAgents, "KV_" + bus.BucketLeader,
		"OBJ_" + bus.BucketCAS} {
		cctx, ccancel := context.WithTimeout(ctx, 30*time.Second)
		cons, err := js.OrderedConsumer(cctx, stream, jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy})
		ccancel()
		if err != nil {
			t.Fatalf("read stream %s: %v", stream, err)
		}
		cc, err := cons.Consume(func(m jetstream.Msg) { c.add("stream "+stream, m.Subject(), m.Headers(), m.Data()) })
		if err != nil {
			t.Fatalf("consume stream %s: %v", stream, err)
		}
		t.Cleanup(cc.Stop)
	}
	return c
}

func (c *natsCapture) add(via, subject string, h nats.Header, data []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var hb []byte
	for k, vs := range h {
		for _, v := range vs {
			hb = fmt.Appendf(hb, "%s: %s\n", k, v)
		}
	}
	c.msgs = append(c.msgs, capturedMsg{via: via, subject: subject, header: hb, data: bytes.Clone(data)})
}

// find returns where value was heard: "via subject" of each message whose
// subject, headers or payload hold it.
func (c *natsCapture) find(value []byte) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, m := range c.msgs {
		if bytes.Contains(m.data, value) || bytes.Contains(m.header, value) || bytes.Contains([]byte(m.subject), value) {
			out = append(out, m.via+" "+m.subject)
		}
	}
	return out
}

// summary says how many messages were heard on each subscription and
// stream.
func (c *natsCapture) summary() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := map[string]int{}
	for _, m := range c.msgs {
		n[m.via]++
	}
	var parts []string
	for _, via := range slices.Sorted(maps.Keys(n)) {
		parts = append(parts, fmt.Sprintf("%s %d", via, n[via]))
	}
	return fmt.Sprintf("%d (%s)", len(c.msgs), strings.Join(parts, ", "))
}

// kvValues reads every key of bucket and every revision it keeps, with
// the gateway's credential.
func kvValues(t *testing.T, k *kilnd, bucket string) map[string][]byte {
	t.Helper()
	opt, err := nats.NkeyOptionFromSeed(filepath.Join(k.dataDir, "data", "nats-creds", "gateway.nk"))
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(k.addrs.NATS, opt, nats.Name("e2e-kv-reader"))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	kv, err := js.KeyValue(ctx, bucket)
	if err != nil {
		t.Fatalf("open %s: %v", bucket, err)
	}
	keys, err := kv.ListKeys(ctx)
	if err != nil {
		t.Fatalf("keys of %s: %v", bucket, err)
	}
	out := map[string][]byte{}
	for key := range keys.Keys() {
		hist, err := kv.History(ctx, key)
		if err != nil {
			t.Fatalf("history of %s/%s: %v", bucket, key, err)
		}
		for _, e := range hist {
			out[fmt.Sprintf("%s revision %d", key, e.Revision())] = e.Value()
		}
	}
	return out
}
