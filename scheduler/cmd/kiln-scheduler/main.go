// Command kiln-scheduler runs kiln's scheduler against an external NATS cluster.
package main

import (
	"context"

	"github.com/kilnbuild/kiln/scheduler"
	"github.com/kilnbuild/kiln/services/service"
)

func main() {
	var o scheduler.RunOptions
	service.Main("kiln-scheduler", o.Flags, func(ctx context.Context) error { return scheduler.Run(ctx, o) })
}
