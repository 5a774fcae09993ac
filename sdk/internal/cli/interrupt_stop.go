package cli

import (
	"context"
	"os"
	"sync"
	"sync/atomic"
)

// interruptStop ends a command that only reads from the farm (kiln logs
// -f) on the first interrupt: it cancels the command's context, and the
// command exits ExitInterrupted. The build goes on.
type interruptStop struct {
	hit  atomic.Bool
	done chan struct{}
	wg   sync.WaitGroup
}

// stopOnInterrupt calls cancel on the first signal from interrupts until
// the returned stopper's stop is called.
func stopOnInterrupt(interrupts <-chan os.Signal, cancel context.CancelFunc) *interruptStop {
	s := &interruptStop{done: make(chan struct{})}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		select {
		case <-s.done:
		case <-interrupts:
			s.hit.Store(true)
			cancel()
		}
	}()
	return s
}

// interrupted reports whether an interrupt came.
func (s *interruptStop) interrupted() bool { return s.hit.Load() }

// stop stops watching interrupts and waits for the goroutine that did.
func (s *interruptStop) stop() {
	close(s.done)
	s.wg.Wait()
}
