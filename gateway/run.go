package gateway

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/kilnbuild/kiln/services/bus"
	"github.com/kilnbuild/kiln/services/httpserver"
	"github.com/kilnbuild/kiln/services/logging"
	"github.com/kilnbuild/kiln/services/readyfile"
)

// RunOptions are kiln-gateway's flags.
type RunOptions struct {
	NATSURL    string
	Listen     string
	HTTPListen string
	ReadyFile  string
	LogLevel   string
}

// Flags registers the options on fs (each also read from KILN_<FLAG>).
func (o *RunOptions) Flags(fs *flag.FlagSet) {
	fs.StringVar(&o.NATSURL, "nats-url", "nats://127.0.0.1:4222", "NATS server URL(s), comma-separated")
	fs.StringVar(&o.Listen, "listen", "127.0.0.1:7700", "gRPC listen address (port 0 picks a free port)")
	fs.StringVar(&o.HTTPListen, "http-listen", "127.0.0.1:7701", "HTTP listen address for /healthz, /readyz, /metrics")
	fs.StringVar(&o.ReadyFile, "ready-file", "", "write {\"grpc\":…,\"http\":…} to this file once serving")
	fs.StringVar(&o.LogLevel, "log-level", "info", "debug, info, warn or error")
}

// Run connects to NATS and serves the gateway until ctx ends.
func Run(ctx context.Context, o RunOptions) error {
	log, err := logging.New(os.Stderr, o.LogLevel)
	if err != nil {
		return err
	}
	log = log.With("service", "gateway")
	conn, err := bus.Connect(ctx, o.NATSURL, "kiln-gateway")
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := bus.Setup(ctx, conn.JS, bus.DefaultLimits); err != nil {
		return err
	}
	g, err := New(ctx, Config{Conn: conn, Logger: log})
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", o.Listen)
	if err != nil {
		return fmt.Errorf("grpc listen %s: %w", o.Listen, err)
	}
	hs, err := httpserver.Listen(o.HTTPListen, httpserver.Check{Name: "nats", Check: g.Ready})
	if err != nil {
		lis.Close()
		return err
	}
	if err := readyfile.Write(o.ReadyFile, map[string]string{"grpc": lis.Addr().String(), "http": hs.Addr()}); err != nil {
		lis.Close()
		return err
	}
	log.Info("gateway serving", "grpc", lis.Addr().String(), "http", hs.Addr())
	return g.Serve(ctx, lis, hs)
}

// Serve serves gRPC on lis and HTTP on hs until ctx ends, then stops both:
// gRPC gracefully for a short while, then at once (watch streams are long).
func (g *Gateway) Serve(ctx context.Context, lis net.Listener, hs *httpserver.Server) error {
	gs := g.NewGRPCServer()
	eg, ctx := errgroup.WithContext(ctx)
	eg.Go(func() error { return gs.Serve(lis) })
	eg.Go(func() error { return hs.Serve(ctx) })
	eg.Go(func() error {
		<-ctx.Done()
		g.Shutdown()
		stopped := make(chan struct{})
		go func() { gs.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(3 * time.Second):
			gs.Stop()
			<-stopped
		}
		return nil
	})
	err := eg.Wait()
	if ctx.Err() != nil && err == nil {
		return nil
	}
	return err
}
