// Command kiln-cluster runs kiln distributed on one machine (package
// localfarm): a nats-server cluster, gateways, schedulers and agents, each
// agent on its own dockerd, every one its own process with its own NATS
// credential. It writes --ready-file once everything serves, prints the
// gateway addresses, and stops everything (by pid) on Ctrl-C or SIGTERM.
//
//	go run ./deploy/local/kiln-cluster --nats 3 --gateways 2 --schedulers 2 --agents 3
//
// Needs `make build` (bin/) and, for agents, root (each dockerd gets its
// own bridge).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"

	"github.com/kilnbuild/kiln/deploy/local/localfarm"
)

func main() {
	os.Exit(run())
}

func run() int {
	var o localfarm.Options
	var readyFile string
	var images string
	fs := flag.NewFlagSet("kiln-cluster", flag.ContinueOnError)
	fs.IntVar(&o.NATS, "nats", 1, "NATS nodes (one cluster over loopback routes)")
	fs.IntVar(&o.Gateways, "gateways", 1, "kiln-gateway processes")
	fs.IntVar(&o.Schedulers, "schedulers", 1, "kiln-scheduler processes (one leads, the others stand by)")
	fs.IntVar(&o.Agents, "agents", 2, "kiln-agent processes, each with its own dockerd")
	fs.IntVar(&o.Replicas, "replicas", 0, "--nats-replicas of every service (0: 3 with 3 or more NATS nodes, else 1)")
	fs.IntVar(&o.AgentSlots, "slots", 1, "builds each agent runs at once")
	fs.StringVar(&readyFile, "ready-file", "", `write {"processes":[…]} to this file once everything serves`)
	fs.StringVar(&o.Dir, "dir", "", "state directory (NATS stores, engine data, logs); default a temp dir removed on exit")
	fs.StringVar(&o.Bin, "bin", "", "directory with the kiln binaries (default <repo>/bin)")
	fs.StringVar(&images, "images", "", "comma-separated images copied from the default engine into every agent's engine")
	if err := fs.Parse(os.Args[1:]); err != nil {
		if err == flag.ErrHelp {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "kiln-cluster: unexpected arguments %q\n", fs.Args())
		return 2
	}
	if images != "" {
		o.Images = strings.Split(images, ",")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	farm, err := localfarm.Start(ctx, o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "kiln-cluster:", err)
		return 1
	}
	code := 0
	if readyFile != "" {
		if err := farm.WriteReadyFile(readyFile); err != nil {
			fmt.Fprintln(os.Stderr, "kiln-cluster:", err)
			code = 1
		}
	}
	if code == 0 {
		tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tPID\tADDR\tHTTP")
		for _, p := range farm.Processes() {
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\n", p.Name, p.PID, p.Addr, p.HTTP)
		}
		tw.Flush()
		fmt.Printf("state and logs in %s\n", farm.Dir())
		fmt.Printf("KILN_NATS_URL=%s\n", farm.NATSURL())
		if gws := farm.GatewayAddrs(); len(gws) > 0 {
			fmt.Printf("KILN_GATEWAY=%s\n", strings.Join(gws, ","))
			fmt.Println("try: KILN_GATEWAY=" + strings.Join(gws, ",") + " bin/kiln build examples/hello — Ctrl-C stops the cluster")
		}
		<-ctx.Done()
	}
	stop()
	fmt.Fprintln(os.Stderr, "kiln-cluster: stopping")
	if err := farm.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "kiln-cluster:", err)
		return 1
	}
	if readyFile != "" {
		os.Remove(readyFile)
	}
	return code
}
