package gateway

import (
	"context"
	"flag"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"time"

	"golang.org/x/sync/semaphore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules/buildctx"
	"github.com/kilnbuild/kiln/services/ctxmanifest"
)

// ManifestLimits bound what PutManifest may hold in memory.
//
// The largest legitimate PutManifest under the context limits is
// worstManifestRequestBytes: --context-max-entries entries that are each a
// symlink whose path and target both have --context-max-path bytes, with
// every numeric field at its longest encoding — 100 000 × 8 305 bytes ≈
// 830 MB with the default limits. No source tree is like that (100 000
// entries of real trees take 10–20 MB), so the gateway caps one manifest at
// MaxBytes (--context-max-manifest-bytes, 64 MiB: 100 000 entries with
// paths of ~550 bytes) and sizes gRPC's receive limit to the smaller of the
// two (and to the other RPCs' largest request, see maxRecvMsgSize).
//
// Memory is the budget of bytes that manifests being received, decoded and
// checked may hold at once (--manifest-memory): a PutManifest takes its
// worst-case share (manifestCost of the largest request) before gRPC reads
// a byte of it, waiting for room until the request's deadline, and gives
// back what it does not need once it is decoded. So several concurrent
// maximum-size manifests queue instead of pushing the gateway past the
// budget.
type ManifestLimits struct {
	MaxBytes int64
	Memory   int64
}

// DefaultManifestLimits apply when ManifestLimits are zero.
var DefaultManifestLimits = ManifestLimits{MaxBytes: 64 << 20, Memory: 512 << 20}

// Flags registers the manifest limits.
func (l *ManifestLimits) Flags(fs *flag.FlagSet) {
	*l = DefaultManifestLimits
	fs.Int64Var(&l.MaxBytes, "context-max-manifest-bytes", l.MaxBytes, "largest encoded context manifest PutManifest accepts, in bytes (sizes gRPC's receive limit)")
	fs.Int64Var(&l.Memory, "manifest-memory", l.Memory, "bytes of memory context manifests being received and decoded may hold at once; more wait for room")
}

func (l ManifestLimits) withDefaults() ManifestLimits {
	if l.MaxBytes <= 0 {
		l.MaxBytes = DefaultManifestLimits.MaxBytes
	}
	if l.Memory <= 0 {
		l.Memory = DefaultManifestLimits.Memory
	}
	return l
}

// worstEntryBytes is the encoded size of the largest entry the context
// limits accept: a symlink (or hard link) with a path and a target of
// maxPath bytes, a digest, and every varint at its longest.
func worstEntryBytes(maxPath int) int64 {
	e := &kilnv1.ContextEntry{
		Path:       strings.Repeat("p", maxPath),
		Type:       kilnv1.EntryType_ENTRY_TYPE_SYMLINK,
		Mode:       buildctx.PermBits,
		Size:       math.MaxInt64,
		Digest:     &kilnv1.Digest{Hash: "sha256:" + strings.Repeat("0", 64), SizeBytes: math.MaxInt64},
		LinkTarget: strings.Repeat("t", maxPath),
		MtimeUnix:  math.MinInt64,
	}
	n := proto.Size(e)
	return int64(protowire.SizeTag(1) + protowire.SizeBytes(n))
}

// worstManifestRequestBytes is the largest PutManifestRequest whose manifest
// the context limits accept (see ManifestLimits).
func worstManifestRequestBytes(l ctxmanifest.Limits) int64 {
	m := int64(l.MaxEntries) * worstEntryBytes(l.MaxPathLen)
	return int64(protowire.SizeTag(1)) + int64(protowire.SizeVarint(uint64(m))) + m
}

// manifestRequestMax is the largest PutManifestRequest this gateway reads.
func (l Limits) manifestRequestMax() int64 {
	return min(worstManifestRequestBytes(l.Context), l.Manifests.withDefaults().MaxBytes)
}

// otherRequestMax bounds every other request: a StartBuild with 256 build
// args and 256 labels of 64 KiB each is 32 MiB and some keys; an
// UploadBlobs message carries a 1 MiB chunk.
const otherRequestMax = 36 << 20

// maxRecvMsgSize is gRPC's receive limit: the largest legitimate request.
func (l Limits) maxRecvMsgSize() int {
	return int(max(l.manifestRequestMax(), otherRequestMax))
}

// Costs of the manifest memory model, per PutManifest of n encoded bytes
// and e entries (at most --context-max-entries: they are counted in the
// wire bytes before anything is decoded). While it decodes, the gateway
// holds the wire bytes (n) and the decoded strings (up to n, and 1/8 more
// for the allocator's size classes); each decoded entry adds its structs
// (ContextEntry, Digest, the digest's string: ~260 bytes), the validation
// and deduplication maps (~100 bytes) and its share of the reply (~90
// bytes). 640 bytes per entry covers them with room;
// TestManifestMemoryBound checks the model against the heap.
const manifestEntryCost = 640

func manifestCost(n, e int64) int64 { return n + n*9/8 + e*manifestEntryCost }

// decodedManifestCost is what a decoded request of n bytes and e entries
// keeps after gRPC released the received bytes.
func decodedManifestCost(n, e int64) int64 { return n*9/8 + e*manifestEntryCost }

// manifestGate is the weighted semaphore of ManifestLimits.Memory.
type manifestGate struct {
	sem        *semaphore.Weighted
	worst      int64 // manifestCost of the largest request gRPC reads
	capacity   int64
	maxEntries int
}

func newManifestGate(l Limits) *manifestGate {
	worst := manifestCost(int64(l.maxRecvMsgSize()), int64(l.Context.MaxEntries))
	capacity := max(l.Manifests.withDefaults().Memory, worst) // one largest manifest always fits
	return &manifestGate{sem: semaphore.NewWeighted(capacity), worst: worst, capacity: capacity, maxEntries: l.Context.MaxEntries}
}

// maxManifestWait bounds the wait for room when the request has no
// earlier deadline.
const maxManifestWait = time.Minute

// bound wraps PutManifest's method handler: take the worst-case share of
// the budget before gRPC reads the request, count the manifest's entries
// in the received bytes and refuse too many before decoding them (a
// request of tiny entries would otherwise decode to ~100 times its size),
// keep only the decoded request's share once it is decoded, and give it
// all back when the call ends.
func (mg *manifestGate) bound(h grpc.MethodHandler) grpc.MethodHandler {
	return func(srv any, ctx context.Context, dec func(any) error, interceptor grpc.UnaryServerInterceptor) (any, error) {
		wctx, cancel := context.WithTimeout(ctx, maxManifestWait)
		err := mg.sem.Acquire(wctx, mg.worst)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return nil, status.FromContextError(ctx.Err()).Err()
			}
			manifestsRefused.Inc()
			return nil, status.Errorf(codes.ResourceExhausted, "the gateway is busy decoding other context manifests (its --manifest-memory budget of %d bytes is in use for over %s); retry", mg.capacity, maxManifestWait)
		}
		held := mg.worst
		manifestMemoryHeld.Add(float64(held))
		defer func() {
			mg.sem.Release(held)
			manifestMemoryHeld.Sub(float64(held))
		}()
		decode := func(v any) error {
			req, ok := v.(*kilnv1.PutManifestRequest)
			if !ok {
				return dec(v)
			}
			n, err := mg.decode(dec, req)
			if err != nil {
				return err
			}
			keep := min(held, decodedManifestCost(n, int64(len(req.GetManifest().GetEntries()))))
			mg.sem.Release(held - keep)
			manifestMemoryHeld.Sub(float64(held - keep))
			held = keep
			return nil
		}
		return h(srv, ctx, decode, interceptor)
	}
}

// decode receives the request as wire bytes (gRPC's buffer is released
// when dec returns), counts its entries, decodes it into req, and returns
// its size in bytes.
func (mg *manifestGate) decode(dec func(any) error, req *kilnv1.PutManifestRequest) (int64, error) {
	var raw emptypb.Empty // every field is unknown to it: it keeps the wire bytes
	if err := dec(&raw); err != nil {
		return 0, err
	}
	wire := raw.ProtoReflect().GetUnknown()
	n, err := countManifestEntries(wire)
	if err != nil {
		return 0, status.Errorf(codes.InvalidArgument, "PutManifestRequest does not decode: %v", err)
	}
	if n > mg.maxEntries {
		return 0, status.Errorf(codes.ResourceExhausted, "context has %d entries, over the limit of %d entries", n, mg.maxEntries)
	}
	if err := proto.Unmarshal(wire, req); err != nil {
		return 0, status.Errorf(codes.InvalidArgument, "PutManifestRequest does not decode: %v", err)
	}
	return int64(len(wire)), nil
}

// countManifestEntries counts the manifest entries of an encoded
// PutManifestRequest without decoding them: field 1 (manifest) may occur
// several times (proto merges them), each holding entries as field 1.
func countManifestEntries(b []byte) (int, error) {
	n := 0
	for len(b) > 0 {
		num, typ, k := protowire.ConsumeTag(b)
		if k < 0 {
			return 0, protowire.ParseError(k)
		}
		b = b[k:]
		if num == 1 && typ == protowire.BytesType {
			m, k := protowire.ConsumeBytes(b)
			if k < 0 {
				return 0, protowire.ParseError(k)
			}
			b = b[k:]
			for len(m) > 0 {
				num, typ, k := protowire.ConsumeTag(m)
				if k < 0 {
					return 0, protowire.ParseError(k)
				}
				v := protowire.ConsumeFieldValue(num, typ, m[k:])
				if v < 0 {
					return 0, protowire.ParseError(v)
				}
				if num == 1 {
					n++
				}
				m = m[k+v:]
			}
			continue
		}
		v := protowire.ConsumeFieldValue(num, typ, b)
		if v < 0 {
			return 0, protowire.ParseError(v)
		}
		b = b[v:]
	}
	return n, nil
}

// contextServiceDesc is kilnv1.ContextService_ServiceDesc with PutManifest
// behind the gate.
func (mg *manifestGate) contextServiceDesc() *grpc.ServiceDesc {
	desc := kilnv1.ContextService_ServiceDesc
	desc.Methods = slices.Clone(desc.Methods)
	for i := range desc.Methods {
		if desc.Methods[i].MethodName == "PutManifest" {
			desc.Methods[i].Handler = mg.bound(desc.Methods[i].Handler)
		}
	}
	return &desc
}

// encodeManifest writes m's deterministic encoding (ctxmanifest.Marshal's
// bytes) to w entry by entry, so a manifest is hashed and stored without
// a second copy of it in memory.
func encodeManifest(m *kilnv1.ContextManifest, w io.Writer) (int64, error) {
	opts := proto.MarshalOptions{Deterministic: true}
	var buf []byte
	var n int64
	for _, e := range m.Entries {
		buf = protowire.AppendTag(buf[:0], 1, protowire.BytesType)
		buf = protowire.AppendVarint(buf, uint64(opts.Size(e)))
		var err error
		if buf, err = opts.MarshalAppend(buf, e); err != nil {
			return n, fmt.Errorf("encode manifest entry %q: %w", e.Path, err)
		}
		k, err := w.Write(buf)
		n += int64(k)
		if err != nil {
			return n, err
		}
	}
	k, err := w.Write(m.ProtoReflect().GetUnknown())
	return n + int64(k), err
}
