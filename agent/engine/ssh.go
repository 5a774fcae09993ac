package engine

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/moby/buildkit/session/sshforward"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// sshForwarder is the session's ssh forwarding (BuildKit's sshforward
// service): a RUN --mount=type=ssh[,id=ID] step's socket reaches it
// through the engine, and it serves ID's agent there, read-only. A session
// without one (no BuildKitOptions.SSH) answers Unimplemented, and the
// engine fails such a step with `no SSH key "ID" forwarded from the
// client`, as docker build without --ssh does; an id the build did not
// send fails with "unset ssh forward key ID", as buildx's does.
type sshForwarder struct {
	agents map[string]agent.Agent
}

// Register implements session.Attachable.
func (f *sshForwarder) Register(srv *grpc.Server) { sshforward.RegisterSSHServer(srv, f) }

// CheckAgent tells the engine whether the build has keys for the id.
func (f *sshForwarder) CheckAgent(_ context.Context, req *sshforward.CheckAgentRequest) (*sshforward.CheckAgentResponse, error) {
	id := req.GetID()
	if id == "" {
		id = sshforward.DefaultID
	}
	if _, ok := f.agents[id]; !ok {
		return nil, fmt.Errorf("unset ssh forward key %s", id)
	}
	return &sshforward.CheckAgentResponse{}, nil
}

// ForwardAgent serves one connection of a step to the id's agent (the id
// travels in the stream's metadata) until either side closes it.
func (f *sshForwarder) ForwardAgent(stream sshforward.SSH_ForwardAgentServer) error {
	ctx := stream.Context()
	id := sshforward.DefaultID
	if md, _ := metadata.FromIncomingContext(ctx); len(md.Get(sshforward.KeySSHID)) > 0 && md.Get(sshforward.KeySSHID)[0] != "" {
		id = md.Get(sshforward.KeySSHID)[0]
	}
	a, ok := f.agents[id]
	if !ok {
		return fmt.Errorf("unset ssh forward key %s", id)
	}
	served, conn := net.Pipe()
	done := make(chan struct{})
	go func() { // ends when Copy closes conn
		defer close(done)
		_ = agent.ServeAgent(readOnlyAgent{a}, served)
		served.Close()
	}()
	err := sshforward.Copy(ctx, conn, stream, nil) // closes conn
	<-done
	return err
}

// readOnlyAgent lets a build's steps list the keys and sign with them, as
// buildx's forwarding does: they cannot add, remove or lock keys, so no
// step changes what the next one gets.
type readOnlyAgent struct{ agent.Agent }

var errReadOnlyAgent = errors.New("the build's ssh agent is read-only")

func (readOnlyAgent) Add(agent.AddedKey) error   { return errReadOnlyAgent }
func (readOnlyAgent) Remove(ssh.PublicKey) error { return errReadOnlyAgent }
func (readOnlyAgent) RemoveAll() error           { return errReadOnlyAgent }
func (readOnlyAgent) Lock([]byte) error          { return errReadOnlyAgent }
func (readOnlyAgent) Unlock([]byte) error        { return errReadOnlyAgent }
