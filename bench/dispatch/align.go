package main

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/kilnbuild/kiln/services/bus"
)

// intakeConsumer is the scheduler's durable intake consumer.
const intakeConsumer = "kiln-scheduler"

// leaders names the servers leading the intake stream and its consumer.
func leaders(ctx context.Context, conn *bus.Conn) (stream, consumer string, err error) {
	s, err := conn.JS.Stream(ctx, bus.StreamRequests)
	if err != nil {
		return "", "", err
	}
	si, err := s.Info(ctx)
	if err != nil {
		return "", "", err
	}
	c, err := s.Consumer(ctx, intakeConsumer)
	if err != nil {
		return "", "", err
	}
	ci, err := c.Info(ctx)
	if err != nil {
		return "", "", err
	}
	if si.Cluster != nil {
		stream = si.Cluster.Leader
	}
	if ci.Cluster != nil {
		consumer = ci.Cluster.Leader
	}
	return stream, consumer, nil
}

// alignIntake moves the intake consumer's leadership to the server that
// leads KILN_REQUESTS (-align-intake): a consumer led by a follower of
// its stream delivers a message only once that follower has learnt it is
// committed. It returns where the leaders were.
func alignIntake(ctx context.Context, conn *bus.Conn) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	stream, consumer, err := leaders(ctx, conn)
	if err != nil {
		return "", fmt.Errorf("intake leaders: %w", err)
	}
	was := fmt.Sprintf("stream led by %s, consumer by %s", stream, consumer)
	if stream == consumer || stream == "" {
		return was, nil
	}
	req, _ := json.Marshal(map[string]any{"placement": map[string]string{"preferred": stream}})
	subj := fmt.Sprintf("$JS.API.CONSUMER.LEADER.STEPDOWN.%s.%s", bus.StreamRequests, intakeConsumer)
	// A step-down's election may pick another server: ask again until the
	// stream's leader leads the consumer too.
	for {
		if err := stepDown(ctx, conn, subj, req); err != nil {
			return was, err
		}
		deadline := time.Now().Add(3 * time.Second)
		for time.Now().Before(deadline) {
			s, c, err := leaders(ctx, conn)
			if err == nil && s == c {
				return was, nil
			}
			if err == nil && s != stream { // the stream's leadership moved too
				return alignIntake(ctx, conn)
			}
			select {
			case <-ctx.Done():
				return was, fmt.Errorf("intake consumer leadership did not move to %s: %w", stream, ctx.Err())
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
}

// stepDown asks the intake consumer's leader to hand over to the
// preferred server in req.
func stepDown(ctx context.Context, conn *bus.Conn, subj string, req []byte) error {
	resp, err := conn.NC.RequestWithContext(ctx, subj, req)
	if err != nil {
		return fmt.Errorf("consumer leader stepdown: %w", err)
	}
	var r struct {
		Error *struct {
			Description string `json:"description"`
		} `json:"error"`
	}
	if json.Unmarshal(resp.Data, &r) == nil && r.Error != nil {
		return fmt.Errorf("consumer leader stepdown: %s", r.Error.Description)
	}
	return nil
}
