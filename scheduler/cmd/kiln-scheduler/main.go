// Command kiln-scheduler queues builds and hands them to agents, against an
// external NATS cluster.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/kilnbuild/kiln/scheduler"
	"github.com/kilnbuild/kiln/services/config"
)

func main() {
	fs := flag.NewFlagSet("kiln-scheduler", flag.ContinueOnError)
	var o scheduler.RunOptions
	o.Flags(fs)
	if err := config.Parse(fs, os.Args[1:]); err != nil {
		if err == flag.ErrHelp {
			os.Exit(0)
		}
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := scheduler.Run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "kiln-scheduler:", err)
		os.Exit(1)
	}
}
