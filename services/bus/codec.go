package bus

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
)

// HeaderCarrier adapts nats.Header to OpenTelemetry's TextMapCarrier so W3C
// trace context crosses NATS in message headers.
type HeaderCarrier nats.Header

// Get returns the first value of key.
func (h HeaderCarrier) Get(key string) string { return nats.Header(h).Get(key) }

// Set replaces key's values with value.
func (h HeaderCarrier) Set(key, value string) { nats.Header(h).Set(key, value) }

// Keys lists the header names.
func (h HeaderCarrier) Keys() []string {
	keys := make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, k)
	}
	return keys
}

// NewMsg encodes m as a protobuf NATS message on subject.
func NewMsg(subject string, m proto.Message) (*nats.Msg, error) {
	data, err := proto.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode %T: %w", m, err)
	}
	return &nats.Msg{Subject: subject, Data: data, Header: nats.Header{}}, nil
}

// Decode decodes a protobuf payload into m.
func Decode(data []byte, m proto.Message) error {
	if err := proto.Unmarshal(data, m); err != nil {
		return fmt.Errorf("decode %T: %w", m, err)
	}
	return nil
}

// PublishEvent appends ev to its build's event log and waits for the stream
// to store it, so events from one publisher keep their order. The event's
// sequence is assigned by readers (its position in the log), not here.
func PublishEvent(ctx context.Context, js jetstream.JetStream, ev *kilnv1.BuildEvent) error {
	msg, err := EventMsg(ev)
	if err != nil {
		return err
	}
	if _, err := js.PublishMsg(ctx, msg); err != nil {
		return fmt.Errorf("publish event for build %s: %w", ev.BuildId, err)
	}
	return nil
}

// EventMsg is the message that appends ev to its build's event log,
// stamping ev with the current time if it has none.
func EventMsg(ev *kilnv1.BuildEvent) (*nats.Msg, error) {
	if ev.Time == nil {
		ev.Time = timestamppb.Now()
	}
	return NewMsg(EventsSubject(ev.BuildId), ev)
}
