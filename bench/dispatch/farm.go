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

	"github.com/kilnbuild/kiln/deploy/local/localfarm"
	"github.com/kilnbuild/kiln/gateway"
	"github.com/kilnbuild/kiln/scheduler"
	"github.com/kilnbuild/kiln/services/bus"
)

// farm is the real part of the farm: NATS — the nats-server library in
// this process with JetStream on files, or (cluster mode) nats-server
// processes started by localfarm, one cluster with JetStream fsyncing every
// write and every stream replicated on up to three nodes — and, in this
// process, the gateway serving gRPC on a loopback listener and the
// scheduler. Each has its own NATS connection, as in the distributed
// deployment.
type farm struct {
	natsURL  string
	replicas int
	natsPIDs []int            // nats-server processes (cluster mode), for their CPU time
	client   *grpc.ClientConn // to the gateway, over loopback TCP
	stops    []func()         // run last first by stop
}

// startFarm starts the farm with its state under dir: natsNodes 0 runs the
// nats-server library in this process; N >= 1 runs N nats-server processes
// (localfarm, replicas 3 from 3 nodes) with JetStream's sync_interval
// natsSync ("" = always). sched is completed with the
// scheduler's connection, and with log when it has no logger.
func startFarm(ctx context.Context, dir string, log *slog.Logger, sched scheduler.Config, natsNodes int, natsSync string) (f *farm, err error) {
	f = &farm{replicas: 1}
	defer func() {
		if err != nil {
			f.stop()
		}
	}()
	if natsNodes == 0 {
		ns, err := bus.RunEmbedded(bus.EmbeddedOptions{Listen: "127.0.0.1:0", StoreDir: filepath.Join(dir, "nats")})
		if err != nil {
			return f, err
		}
		f.stops = append(f.stops, func() { ns.Shutdown(); ns.WaitForShutdown() })
		f.natsURL = ns.ClientURL()
	} else {
		// No authorization: the recorder's taps subscribe to kiln.requests
		// and kiln.events.*, which no role's credential may.
		lf, err := localfarm.Start(ctx, localfarm.Options{NATS: natsNodes, Dir: filepath.Join(dir, "localfarm"), NoAuth: true, NATSSync: natsSync})
		if err != nil {
			return f, err
		}
		f.stops = append(f.stops, func() {
			if err := lf.Stop(); err != nil {
				log.Warn("stopping the NATS cluster", "err", err)
			}
		})
		f.natsURL, f.replicas = lf.NATSURL(), lf.Replicas()
		for _, p := range lf.Processes() {
			f.natsPIDs = append(f.natsPIDs, p.PID)
		}
	}

	gwConn, err := f.connect(ctx, "bench-gateway")
	if err != nil {
		return f, err
	}
	limits := bus.DefaultLimits
	limits.Replicas = f.replicas
	if err := bus.Setup(ctx, gwConn.JS, limits); err != nil {
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

// connect opens a NATS connection to the farm (any of its nodes), closed by stop.
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
