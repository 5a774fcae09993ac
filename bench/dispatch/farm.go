package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/kilnbuild/kiln/gateway"
	"github.com/kilnbuild/kiln/scheduler"
	"github.com/kilnbuild/kiln/services/bus"
)

// farm is the real part of the farm, in this process: the nats-server
// library with JetStream on files, the gateway serving gRPC on a loopback
// listener and the scheduler. Each has its own NATS connection, as in the
// distributed deployment.
type farm struct {
	natsURL string
	client  *grpc.ClientConn // to the gateway, over loopback TCP
	stops   []func()         // run last first by stop
}

// startFarm starts the farm with its state under dir. sched is completed
// with the scheduler's connection, and with log when it has no logger.
func startFarm(ctx context.Context, dir string, log *slog.Logger, sched scheduler.Config) (f *farm, err error) {
	f = &farm{}
	defer func() {
		if err != nil {
			f.stop()
		}
	}()
	ns, err := bus.RunEmbedded(bus.EmbeddedOptions{Listen: "127.0.0.1:0", StoreDir: filepath.Join(dir, "nats")})
	if err != nil {
		return f, err
	}
	f.stops = append(f.stops, func() { ns.Shutdown(); ns.WaitForShutdown() })
	f.natsURL = ns.ClientURL()

	gwConn, err := f.connect(ctx, "bench-gateway")
	if err != nil {
		return f, err
	}
	if err := bus.Setup(ctx, gwConn.JS, bus.DefaultLimits); err != nil {
		return f, err
	}
	gw, err := gateway.New(ctx, gateway.Config{Conn: gwConn, Logger: log.With("service", "gateway")})
	if err != nil {
		return f, err
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return f, fmt.Errorf("grpc listen: %w", err)
	}
	gs := gw.NewGRPCServer()
	served := make(chan error, 1)
	go func() { served <- gs.Serve(lis) }()
	f.stops = append(f.stops, func() {
		gw.Shutdown()
		gs.Stop() // no watch streams here: nothing to wait for
		if err := <-served; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			log.Warn("gateway gRPC server", "err", err)
		}
	})
	f.client, err = grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return f, fmt.Errorf("dial gateway: %w", err)
	}
	f.stops = append(f.stops, func() { _ = f.client.Close() })

	schedConn, err := f.connect(ctx, "bench-scheduler")
	if err != nil {
		return f, err
	}
	sched.Conn = schedConn
	if sched.Logger == nil {
		sched.Logger = log
	}
	sched.Logger = sched.Logger.With("service", "scheduler")
	s, err := scheduler.New(ctx, sched)
	if err != nil {
		return f, err
	}
	sctx, stopSched := context.WithCancel(context.WithoutCancel(ctx))
	schedDone := make(chan error, 1)
	go func() { schedDone <- s.Run(sctx) }()
	f.stops = append(f.stops, func() {
		stopSched()
		if err := <-schedDone; err != nil {
			log.Warn("scheduler", "err", err)
		}
	})
	return f, nil
}

// connect opens a NATS connection to the farm, closed by stop.
func (f *farm) connect(ctx context.Context, name string) (*bus.Conn, error) {
	c, err := bus.Connect(ctx, f.natsURL, name)
	if err != nil {
		return nil, err
	}
	f.stops = append(f.stops, c.Close)
	return c, nil
}

// stop stops every part, clients before the servers they depend on.
func (f *farm) stop() {
	for i := len(f.stops) - 1; i >= 0; i-- {
		f.stops[i]()
	}
	f.stops = nil
}
