package cas

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kilnbuild/kiln/services/bus"
)

// Item is one blob of a batch, held in memory.
type Item struct {
	Digest string
	Data   []byte
}

// BatchItemMaxBytes is the largest blob PutBatch takes: one object-store
// chunk.
const BatchItemMaxBytes = defaultChunkBytes

// PutBatch stores small blobs, each after checking it hashes to its
// digest, as objects of KILN_CAS that every reader (the object store's own
// Get, List, Delete, UpdateMeta; getSmall) sees as any other. It writes
// the object store's messages itself: a blob's one chunk on
// "$O.KILN_CAS.C.<digest hex>" and its ObjectInfo on its meta subject,
// both rolling up what the subject held before, so writing a blob twice
// (two uploads racing) leaves one copy. The object store's Put costs a
// subscription, a lookup and two acknowledged publishes per blob, which
// thousands of one-line files cannot afford; the messages go as atomic
// batches (writeBlobs), a few hundred blobs to one synced write. All
// blobs are verified before any is written; on error some may have been
// stored (each one whole: its meta follows its chunk) and the caller may
// retry.
func (s *Store) PutBatch(ctx context.Context, items []Item, m Meta) error {
	for _, it := range items {
		if !ValidDigest(it.Digest) {
			return fmt.Errorf("%w: %q", ErrBadDigest, it.Digest)
		}
		if len(it.Data) > BatchItemMaxBytes {
			return fmt.Errorf("blob %s is %d bytes, over the %d bytes of a batched blob", it.Digest, len(it.Data), BatchItemMaxBytes)
		}
		if err := CheckDigest(it.Digest, it.Data); err != nil {
			return err
		}
	}
	blobs := make([][]*nats.Msg, 0, len(items))
	seen := make(map[string]bool, len(items))
	for _, it := range items {
		if seen[it.Digest] {
			continue
		}
		seen[it.Digest] = true
		ms, err := blobMsgs(it, m)
		if err != nil {
			return err
		}
		blobs = append(blobs, ms)
	}
	if err := s.writeBlobs(ctx, blobs); err != nil {
		return fmt.Errorf("store a batch of %d blobs: %w", len(items), err)
	}
	for _, it := range items {
		s.remember(it.Digest, int64(len(it.Data)))
		s.small.AddCost(it.Digest, it.Data, int64(len(it.Data))+1)
	}
	return nil
}

// blobMsgs returns the object store's messages for one blob: its one chunk
// (none for an empty blob), then its ObjectInfo, each rolling up what its
// subject held.
func blobMsgs(it Item, m Meta) ([]*nats.Msg, error) {
	hexSum := strings.TrimPrefix(it.Digest, "sha256:")
	sum, _ := hex.DecodeString(hexSum)
	info := jetstream.ObjectInfo{
		ObjectMeta: jetstream.ObjectMeta{Name: it.Digest, Metadata: m.metadata(),
			Opts: &jetstream.ObjectMetaOptions{ChunkSize: uint32(max(len(it.Data), 1))}},
		Bucket: bus.BucketCAS,
		NUID:   hexSum,
		Size:   uint64(len(it.Data)),
		Digest: "SHA-256=" + base64.URLEncoding.EncodeToString(sum),
	}
	var out []*nats.Msg
	if len(it.Data) > 0 {
		info.Chunks = 1
		chunk := nats.NewMsg(chunkSubject(hexSum))
		chunk.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
		chunk.Data = it.Data
		out = append(out, chunk)
	}
	data, err := json.Marshal(info)
	if err != nil {
		return nil, fmt.Errorf("store blob %s: %w", it.Digest, err)
	}
	meta := nats.NewMsg(metaSubject(it.Digest))
	meta.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
	meta.Data = data
	return append(out, meta), nil
}

func chunkSubject(nuid string) string { return "$O." + bus.BucketCAS + ".C." + nuid }
