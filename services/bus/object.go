package bus

import (
	"context"

	"github.com/nats-io/nats.go/jetstream"
)

// ObjectIncomplete reports whether the object info describes, in the
// object store bucket, holds fewer chunks than its meta counts: what an
// upload leaves when it failed after its meta was written (a timeout that
// the server applied anyway). Reading such an object waits for chunks that
// never come; a writer must store it again, a reader give up. An error
// reading the stream's state counts as complete (the caller's read will
// tell).
func ObjectIncomplete(ctx context.Context, js jetstream.JetStream, bucket string, info *jetstream.ObjectInfo) bool {
	if info == nil || info.Chunks == 0 {
		return false
	}
	s, err := js.Stream(ctx, "OBJ_"+bucket)
	if err != nil {
		return false
	}
	subject := "$O." + bucket + ".C." + info.NUID
	si, err := s.Info(ctx, jetstream.WithSubjectFilter(subject))
	return err == nil && si.State.Subjects[subject] < uint64(info.Chunks)
}
