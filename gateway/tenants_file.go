package gateway

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"

	"github.com/kilnbuild/kiln/services/tenants"
)

// TenantsFlags name the tenants file.
type TenantsFlags struct {
	// File is the tenants file (YAML, see tenants.File); empty runs the
	// gateway in single-tenant local mode.
	File string
}

// Flags registers --tenants-file (also read from KILN_TENANTS_FILE).
func (f *TenantsFlags) Flags(fs *flag.FlagSet) {
	fs.StringVar(&f.File, "tenants-file", "", "YAML file of tenants and their token hashes (see `kilnd tenants add`); re-read on SIGHUP. Without it: one local tenant, no token, loopback --listen only")
}

// Load reads the tenants file; nil without one (local mode).
func (f TenantsFlags) Load() (*tenants.Set, error) {
	if f.File == "" {
		return nil, nil
	}
	return tenants.Load(f.File)
}

// CheckListen refuses to serve single-tenant local mode (no tenants file)
// on anything but a loopback address: without tokens, anyone who can
// reach the port could build, read every build's log and cancel builds.
func (f TenantsFlags) CheckListen(listen string) error {
	if f.File != "" || IsLoopback(listen) {
		return nil
	}
	return fmt.Errorf("--listen %s is not a loopback address, and without --tenants-file anyone who reaches it could use the farm: "+
		"give a tenants file (`kilnd tenants add NAME --file FILE`, then --tenants-file FILE, ideally with --tls-cert/--tls-key), or listen on 127.0.0.1", listen)
}

// LogMode says at start which mode the gateway runs in.
func (f TenantsFlags) LogMode(log *slog.Logger, set *tenants.Set) {
	if set == nil {
		log.Info("single-tenant local mode: no tenants file; listening on loopback only")
		return
	}
	log.Info(fmt.Sprintf("multi-tenant: %d tenants from %s", set.Len(), f.File), "tenants_file", f.File, "tenants", set.Len())
}

// IsLoopback reports whether the listen address addr ("host:port") binds
// loopback interfaces only: "localhost" or a loopback IP. An empty host
// binds every interface.
func IsLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// ReloadOnSIGHUP re-reads the tenants file on every SIGHUP until ctx ends
// and puts it in force (see Gateway.ReloadTenants). A file that does not
// parse leaves the tenants in force unchanged and is logged. Without a
// tenants file it does nothing.
func (f TenantsFlags) ReloadOnSIGHUP(ctx context.Context, g *Gateway, log *slog.Logger) {
	if f.File == "" {
		return
	}
	onSIGHUP(ctx, func() {
		set, err := tenants.Load(f.File)
		if err != nil {
			log.Error("tenants file not reloaded: keeping the tenants in force", "err", err)
			return
		}
		ended := g.ReloadTenants(set)
		log.Info(fmt.Sprintf("tenants file reloaded: %d tenants", set.Len()), "tenants_file", f.File, "revoked_streams", ended)
	})
}
