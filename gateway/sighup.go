package gateway

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

// onSIGHUP calls reload on every SIGHUP the process receives, one call at a
// time, from a goroutine of its own, until ctx ends.
func onSIGHUP(ctx context.Context, reload func()) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		defer signal.Stop(hup)
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				reload()
			}
		}
	}()
}
