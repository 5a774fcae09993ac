package gateway

import (
	"context"
	"flag"
	"fmt"
	"net"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"

	"github.com/kilnbuild/kiln/services/httpserver"
	"github.com/kilnbuild/kiln/services/readyfile"
	"github.com/kilnbuild/kiln/services/sealed"
	"github.com/kilnbuild/kiln/services/service"
)

// RunOptions are kiln-gateway's flags.
type RunOptions struct {
	service.Common
	Listen     string
	Limits     Limits
	SecretsKey SecretsKeyFlags
	Tenants    TenantsFlags
	TLS        TLSFlags
	UI         UIFlags
}

// Flags registers the options on fs (each also read from KILN_<FLAG>).
func (o *RunOptions) Flags(fs *flag.FlagSet) {
	o.Common.Flags(fs, "127.0.0.1:7701", `{"grpc":…,"http":…}`)
	fs.StringVar(&o.Listen, "listen", "127.0.0.1:7700", "gRPC listen address (port 0 picks a free port)")
	o.Limits.Flags(fs)
	o.SecretsKey.Flags(fs)
	o.Tenants.Flags(fs)
	o.TLS.Flags(fs)
	o.UI.Flags(fs)
}

// Run connects to NATS and serves the gateway until ctx ends.
func Run(ctx context.Context, o RunOptions) error {
	secretsKey, err := o.SecretsKey.Load()
	if err != nil {
		return err
	}
	if err := o.Tenants.CheckListen(o.Listen); err != nil {
		return err
	}
	tenantSet, err := o.Tenants.Load()
	if err != nil {
		return err
	}
	tlsSrv, err := o.TLS.Server()
	if err != nil {
		return err
	}
	log, conn, err := o.Start(ctx, "gateway")
	if err != nil {
		return err
	}
	defer conn.Close()
	if secretsKey == nil {
		log.Warn("no secrets key configured: builds with secrets will be refused (set --secrets-public-key)")
	} else {
		log.Info("build secrets enabled", "secrets_key_id", sealed.KeyID(*secretsKey))
	}
	g, err := New(ctx, Config{Conn: conn, Logger: log, Limits: o.Limits, SecretsKey: secretsKey, Tenants: tenantSet})
	if err != nil {
		return err
	}
	o.Tenants.LogMode(log, tenantSet)
	o.Tenants.ReloadOnSIGHUP(ctx, g, log)
	tlsSrv.ReloadOnSIGHUP(ctx, log)
	lis, err := net.Listen("tcp", o.Listen)
	if err != nil {
		return fmt.Errorf("grpc listen %s: %w", o.Listen, err)
	}
	hs, err := httpserver.Listen(o.HTTPListen, httpserver.Check{Name: "nats", Check: g.Ready})
	if err != nil {
		lis.Close()
		return err
	}
	hs.Handle("/ui/", g.UI(o.UI))
	if err := readyfile.Write(o.ReadyFile, map[string]string{"grpc": lis.Addr().String(), "http": hs.Addr()}); err != nil {
		lis.Close()
		return err
	}
	log.Info("gateway serving", "grpc", lis.Addr().String(), "http", hs.Addr(), "tls", o.TLS.Enabled(), "mutual_tls", o.TLS.ClientCA != "")
	return g.Serve(ctx, lis, hs, tlsSrv.ServerOptions()...)
}

// Serve serves gRPC on lis (with opts, e.g. TLS) and HTTP on hs until ctx
// ends, then stops both: gRPC gracefully for a short while, then at once
// (watch streams are long). The HTTP port (health, /metrics) needs no
// token.
func (g *Gateway) Serve(ctx context.Context, lis net.Listener, hs *httpserver.Server, opts ...grpc.ServerOption) error {
	gs := g.NewGRPCServer(opts...)
	eg, ctx := errgroup.WithContext(ctx)
	eg.Go(func() error { return gs.Serve(lis) })
	eg.Go(func() error { return hs.Serve(ctx) })
	eg.Go(func() error { g.followNATS(ctx); return nil })
	eg.Go(func() error { return g.runCAS(ctx) })
	eg.Go(func() error { g.runAbandoned(ctx); return nil })
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
