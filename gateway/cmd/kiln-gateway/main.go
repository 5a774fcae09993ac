// Command kiln-gateway serves kiln's public gRPC API against an external
// NATS cluster.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/kilnbuild/kiln/gateway"
	"github.com/kilnbuild/kiln/services/config"
)

func main() {
	fs := flag.NewFlagSet("kiln-gateway", flag.ContinueOnError)
	var o gateway.RunOptions
	o.Flags(fs)
	if err := config.Parse(fs, os.Args[1:]); err != nil {
		if err == flag.ErrHelp {
			os.Exit(0)
		}
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := gateway.Run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "kiln-gateway:", err)
		os.Exit(1)
	}
}
