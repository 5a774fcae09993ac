package gateway

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/services/ctxmanifest"
)

// rawRequest is a request already encoded; rawCodec sends it as is, so the
// test's clients hold only their encoded bytes while the gateway decodes.
type rawRequest []byte

type rawCodec struct{}

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	if r, ok := v.(rawRequest); ok {
		return mem.BufferSlice{mem.SliceBuffer(r)}, nil
	}
	return encoding.GetCodecV2("proto").Marshal(v)
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	return encoding.GetCodecV2("proto").Unmarshal(data, v)
}

func (rawCodec) Name() string { return "proto" }

// maxSizeManifest is a PutManifestRequest of l.Context.MaxEntries file
// entries whose paths are as long as fits in l's largest manifest request.
func maxSizeManifest(t *testing.T, l Limits, variant int) rawRequest {
	t.Helper()
	n := l.Context.MaxEntries
	digest := &kilnv1.Digest{Hash: fmt.Sprintf("sha256:%x", sha256.Sum256([]byte("same file"))), SizeBytes: 9}
	entry := func(i, pathLen int) *kilnv1.ContextEntry {
		p := fmt.Sprintf("v%d/%07d/", variant, i)
		p += strings.Repeat("x", pathLen-len(p))
		return &kilnv1.ContextEntry{Path: p, Type: kilnv1.EntryType_ENTRY_TYPE_FILE, Mode: 0o644, Size: 9, Digest: digest, MtimeUnix: 1_700_000_000}
	}
	// Every entry has the same size, so the path length follows from one.
	overhead := int64(proto.Size(&kilnv1.PutManifestRequest{Manifest: &kilnv1.ContextManifest{Entries: []*kilnv1.ContextEntry{entry(0, 20)}}})) - 20
	pathLen := int((l.manifestRequestMax()-16)/int64(n) - overhead)
	if pathLen > l.Context.MaxPathLen {
		pathLen = l.Context.MaxPathLen
	}
	m := &kilnv1.ContextManifest{Entries: make([]*kilnv1.ContextEntry, n)}
	for i := range m.Entries {
		m.Entries[i] = entry(i, pathLen)
	}
	if _, err := ctxmanifest.Validate(m, l.Context); err != nil {
		t.Fatal(err)
	}
	data, err := proto.Marshal(&kilnv1.PutManifestRequest{Manifest: m})
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(data)) > l.manifestRequestMax() || int64(len(data)) < l.manifestRequestMax()*99/100 {
		t.Fatalf("manifest request of %d bytes; want just under %d", len(data), l.manifestRequestMax())
	}
	return data
}

// liveHeap forces a collection and returns the live heap.
func liveHeap() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// TestManifestMemoryBound sends four maximum-size manifests at once, each
// on its own connection, to an in-process gateway on real NATS: the live
// heap, sampled after a forced collection throughout, grows by no more than
// the --manifest-memory budget (plus the in-process NATS server's and
// gRPC's buffers), and every manifest is accepted.
func TestManifestMemoryBound(t *testing.T) {
	limits := DefaultLimits
	limits.Context.MaxEntries = 40_000
	limits.Context.MaxPathLen = 1024
	limits.Manifests = ManifestLimits{MaxBytes: 16 << 20, Memory: 1} // room for one largest manifest
	if os.Getenv("KILN_TEST_MANIFEST_MEMORY_UNBOUNDED") != "" {
		limits.Manifests.Memory = 1 << 40 // shows what the gate saves
	}
	h := startCASGateway(t, limits)
	budget := h.g.manifests.capacity
	t.Logf("largest manifest request %d bytes; its cost %d bytes; budget %d bytes", limits.manifestRequestMax(), h.g.manifests.worst, budget)

	const clients = 4
	reqs := make([]rawRequest, clients)
	conns := make([]*grpc.ClientConn, clients)
	for i := range reqs {
		reqs[i] = maxSizeManifest(t, limits, i)
		cc, err := grpc.NewClient(h.addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.ForceCodecV2(rawCodec{})))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cc.Close() })
		conns[i] = cc
	}

	liveHeap()
	baseline := liveHeap()
	var (
		peak uint64
		mu   sync.Mutex
	)
	stop := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			n := liveHeap()
			mu.Lock()
			peak = max(peak, n)
			mu.Unlock()
			select {
			case <-stop:
				return
			default:
			}
		}
	}()

	var eg errgroup.Group
	digests := make([]string, clients)
	for i := range reqs {
		eg.Go(func() error {
			var resp kilnv1.PutManifestResponse
			if err := conns[i].Invoke(t.Context(), kilnv1.ContextService_PutManifest_FullMethodName, reqs[i], &resp); err != nil {
				return fmt.Errorf("client %d: %w", i, err)
			}
			digests[i] = resp.Digest.GetHash()
			return nil
		})
	}
	err := eg.Wait()
	close(stop)
	<-sampled
	if err != nil {
		t.Fatal(err)
	}
	growth := int64(peak) - int64(baseline)
	t.Logf("live heap: baseline %d MiB, peak %d MiB, growth %d MiB (budget %d MiB)", baseline>>20, peak>>20, growth>>20, budget>>20)
	if bound := budget + manifestMemorySlack; growth > bound {
		t.Fatalf("four concurrent maximum-size manifests grew the live heap by %d bytes, over the documented bound of %d bytes (budget %d + %d)", growth, bound, budget, manifestMemorySlack)
	}
	for i, d := range digests {
		ok, err := h.g.blobs.Has(t.Context(), d, -1)
		if err != nil || !ok {
			t.Fatalf("manifest %d (%s) not stored: %v", i, d, err)
		}
		if i > 0 && bytes.Equal([]byte(d), []byte(digests[i-1])) {
			t.Fatalf("manifests %d and %d have one digest", i-1, i)
		}
	}
}

// manifestMemorySlack is what the bound allows beyond the budget: gRPC's
// transport buffers and, in this test, the in-process NATS server's
// buffers for the stored manifests.
const manifestMemorySlack = 16 << 20

// TestEncodeManifestMatchesMarshal: the streamed encoding is the bytes
// ctxmanifest.Marshal produces, so a manifest's digest is unchanged.
func TestEncodeManifestMatchesMarshal(t *testing.T) {
	m := manifestOf(map[string][]byte{"Dockerfile": []byte("FROM scratch\n"), "a/b": []byte("b"), "c": nil})
	m.Entries = append(m.Entries, &kilnv1.ContextEntry{Path: "z", Type: kilnv1.EntryType_ENTRY_TYPE_SYMLINK, Mode: 0o777, LinkTarget: "a/b", MtimeUnix: -5})
	want, err := ctxmanifest.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	n, err := encodeManifest(m, &got)
	if err != nil || n != int64(len(want)) || !bytes.Equal(got.Bytes(), want) {
		t.Fatalf("encodeManifest = %d bytes, %v; differs from Marshal (%d bytes)", n, err, len(want))
	}
}

// TestMaxRecvMsgSize: gRPC's receive limit is the largest legitimate
// request: the smaller of the manifest cap and the manifest the context
// limits allow at most, but never below the other RPCs' largest request.
func TestMaxRecvMsgSize(t *testing.T) {
	if got := worstEntryBytes(4096); got < 8192+64 || got > 8192+128 {
		t.Fatalf("worst entry with 4096-byte paths = %d bytes", got)
	}
	worst := worstManifestRequestBytes(ctxmanifest.DefaultLimits)
	if worst < 800_000_000 || worst > 840_000_000 {
		t.Fatalf("largest manifest under the default limits = %d bytes; README says about 830 MB", worst)
	}
	if got := DefaultLimits.maxRecvMsgSize(); got != 64<<20 {
		t.Fatalf("default receive limit = %d, want the 64 MiB manifest cap", got)
	}
	small := DefaultLimits
	small.Context.MaxEntries, small.Context.MaxPathLen = 1000, 255
	if got := small.maxRecvMsgSize(); got != otherRequestMax {
		t.Fatalf("receive limit with small context limits = %d, want %d (StartBuild's largest)", got, otherRequestMax)
	}
}

// TestManifestEntryBombIsRefusedBeforeDecoding: a request of millions of
// empty entries (2 bytes each on the wire, ~100 times that decoded) is
// refused by counting, before it is decoded.
func TestManifestEntryBombIsRefusedBeforeDecoding(t *testing.T) {
	limits := DefaultLimits
	limits.Manifests.MaxBytes = 8 << 20
	h := startCASGateway(t, limits)
	cc, err := grpc.NewClient(h.addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.ForceCodecV2(rawCodec{}), grpc.MaxCallSendMsgSize(64<<20)))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	entries := bytes.Repeat([]byte{0x0a, 0x00}, 3<<20) // 3 Mi empty entries
	req := protowire.AppendTag(nil, 1, protowire.BytesType)
	req = protowire.AppendBytes(req, entries)
	var resp kilnv1.PutManifestResponse
	err = cc.Invoke(t.Context(), kilnv1.ContextService_PutManifest_FullMethodName, rawRequest(req), &resp)
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "context has 3145728 entries, over the limit of 100000 entries") {
		t.Fatalf("entry bomb = %v; want ResourceExhausted naming the entry limit", err)
	}
}

// FuzzCountManifestEntries: the count from the wire bytes is the number
// of entries proto decodes, for every request proto accepts.
func FuzzCountManifestEntries(f *testing.F) {
	m := manifestOf(map[string][]byte{"Dockerfile": []byte("FROM scratch\n"), "a": []byte("a")})
	seed, _ := proto.Marshal(&kilnv1.PutManifestRequest{Manifest: m})
	f.Add(seed)
	f.Add(append(append([]byte{}, seed...), seed...)) // the manifest twice: merged
	f.Add([]byte{0x0a, 0x04, 0x0a, 0x00, 0x0a, 0x00})
	f.Fuzz(func(t *testing.T, data []byte) {
		var req kilnv1.PutManifestRequest
		if proto.Unmarshal(data, &req) != nil {
			return
		}
		n, err := countManifestEntries(data)
		if err != nil || n != len(req.GetManifest().GetEntries()) {
			t.Fatalf("countManifestEntries = %d, %v; proto decodes %d entries", n, err, len(req.GetManifest().GetEntries()))
		}
	})
}
