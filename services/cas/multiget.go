package cas

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/kilnbuild/kiln/services/bus"
)

// A context of thousands of small files asks about thousands of blobs at
// once. HasMany and GetMany answer with JetStream's batched direct get
// (multi_last: the last message of each of many subjects, up to 1024 per
// request), one request per multiGetSubjects digests, where Has and Get
// cost one request or more per blob: REAPI's BatchReadBlobs over the
// object store's own messages.

// multiGetSubjects is how many subjects one request names (the server
// answers at most 1024 messages).
const multiGetSubjects = 512

// BulkBytes bounds the blob bytes GetMany returns in one call; callers
// split larger sets.
const BulkBytes = 64 << 20

// multiLast calls fn with the subject and data of the last message of each
// subject that has one, asking multiGetSubjects subjects at a time.
func (s *Store) multiLast(ctx context.Context, subjects []string, fn func(subject string, data []byte)) error {
	nc := s.js.Conn()
	for start := 0; start < len(subjects); start += multiGetSubjects {
		part := subjects[start:min(start+multiGetSubjects, len(subjects))]
		if err := multiLastOnce(ctx, nc, part, fn); err != nil {
			return err
		}
	}
	return nil
}

func multiLastOnce(ctx context.Context, nc *nats.Conn, subjects []string, fn func(subject string, data []byte)) error {
	req, err := json.Marshal(struct {
		MultiLast []string `json:"multi_last"`
	}{subjects})
	if err != nil {
		return err
	}
	inbox := nc.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return fmt.Errorf("batched read of %s: %w", bus.BucketCAS, err)
	}
	defer sub.Unsubscribe()
	if err := nc.PublishRequest("$JS.API.DIRECT.GET.OBJ_"+bus.BucketCAS, inbox, req); err != nil {
		return fmt.Errorf("batched read of %s: %w", bus.BucketCAS, err)
	}
	for {
		msg, err := sub.NextMsgWithContext(ctx)
		if err != nil {
			return fmt.Errorf("batched read of %s: %w", bus.BucketCAS, err)
		}
		switch code := msg.Header.Get("Status"); code {
		case "":
			fn(msg.Header.Get(jetstream.SubjectHeader), msg.Data)
		case "204", "404": // end of the batch; none of the subjects has a message
			return nil
		default:
			return fmt.Errorf("batched read of %s: status %s %s", bus.BucketCAS, code, msg.Header.Get("Description"))
		}
	}
}

func metaSubject(digest string) string {
	return "$O." + bus.BucketCAS + ".M." + base64.URLEncoding.EncodeToString([]byte(digest))
}

// HasMany reports, for each digest, whether the blob is stored with that
// size (a size below zero: any size), as Has does, in a few requests.
func (s *Store) HasMany(ctx context.Context, digests []string, sizes []int64) ([]bool, error) {
	have := make([]bool, len(digests))
	index := map[string][]int{}
	var subjects []string
	now := s.now()
	for i, d := range digests {
		if !ValidDigest(d) {
			return nil, fmt.Errorf("%w: %q", ErrBadDigest, d)
		}
		if p, ok := s.present.Get(d); ok && now.Sub(p.at) < s.rememberFor {
			have[i] = sizes[i] < 0 || p.size == sizes[i]
			continue
		}
		subj := metaSubject(d)
		if _, ok := index[subj]; !ok {
			subjects = append(subjects, subj)
		}
		index[subj] = append(index[subj], i)
	}
	err := s.multiLast(ctx, subjects, func(subject string, data []byte) {
		var info jetstream.ObjectInfo
		if json.Unmarshal(data, &info) != nil || info.Deleted {
			return
		}
		for _, i := range index[subject] {
			if info.Name != digests[i] {
				return
			}
			s.remember(digests[i], int64(info.Size))
			have[i] = sizes[i] < 0 || int64(info.Size) == sizes[i]
		}
	})
	if err != nil {
		return nil, err
	}
	return have, nil
}

// GetMany reads the blobs PutBatch stored among digests, each verified
// against its digest, in a few requests; blobs stored otherwise, or
// missing, are absent from the result (read them with Get). Keep the
// blobs asked for under BulkBytes.
func (s *Store) GetMany(ctx context.Context, digests []string) (map[string][]byte, error) {
	out := make(map[string][]byte, len(digests))
	var subjects []string
	for _, d := range digests {
		if !ValidDigest(d) {
			return nil, fmt.Errorf("%w: %q", ErrBadDigest, d)
		}
		if data, ok := s.small.Get(d); ok {
			out[d] = data
			continue
		}
		subjects = append(subjects, chunkSubject(strings.TrimPrefix(d, "sha256:")))
	}
	err := s.multiLast(ctx, subjects, func(subject string, data []byte) {
		d := "sha256:" + strings.TrimPrefix(subject, chunkSubject(""))
		if sumOf(data) == d { // anything else is left to Get
			out[d] = data
		}
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}
