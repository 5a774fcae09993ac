// Command kiln-agent runs builds from the farm's queue on one Docker engine.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/kilnbuild/kiln/agent"
	"github.com/kilnbuild/kiln/services/config"
)

func main() {
	fs := flag.NewFlagSet("kiln-agent", flag.ContinueOnError)
	var o agent.RunOptions
	o.Flags(fs)
	if err := config.Parse(fs, os.Args[1:]); err != nil {
		if err == flag.ErrHelp {
			os.Exit(0)
		}
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := agent.Run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "kiln-agent:", err)
		os.Exit(1)
	}
}
