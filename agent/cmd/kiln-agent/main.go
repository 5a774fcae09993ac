// Command kiln-agent runs kiln's agent against an external NATS cluster.
package main

import (
	"context"

	"github.com/kilnbuild/kiln/agent"
	"github.com/kilnbuild/kiln/services/service"
)

func main() {
	var o agent.RunOptions
	service.Main("kiln-agent", o.Flags, func(ctx context.Context) error { return agent.Run(ctx, o) })
}
