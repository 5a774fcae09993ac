// Command kiln-gateway runs kiln's gateway against an external NATS cluster.
package main

import (
	"context"

	"github.com/kilnbuild/kiln/gateway"
	"github.com/kilnbuild/kiln/services/service"
)

func main() {
	var o gateway.RunOptions
	service.Main("kiln-gateway", o.Flags, func(ctx context.Context) error { return gateway.Run(ctx, o) })
}
