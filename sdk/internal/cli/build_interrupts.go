package cli

import (
	"context"
	"os"
	"sync"

	"github.com/kilnbuild/kiln/sdk/internal/progress"
	"github.com/kilnbuild/kiln/sdk/kiln"
)

// buildInterrupts turns interrupts (Ctrl-C) during `kiln build` and `kiln
// retry` into what the person pressing them wants: the first cancels the
// build on the farm and keeps following it to its end, so the command can
// tell how it ended (ExitInterrupted once it is CANCELLED); the second
// stops following — the build goes on being cancelled on the farm — and
// the command says how to re-attach. Before the build started, the first
// stops the command at once.
type buildInterrupts struct {
	printer *progress.Printer
	// cancel stops the command's context.
	cancel context.CancelFunc

	mu      sync.Mutex // guards the fields below
	client  *kiln.Client
	buildID string
	count   int
}

// start follows interrupts until the returned stop function is called;
// stop waits for the goroutines start began.
func (w *buildInterrupts) start(ctx context.Context, interrupts <-chan os.Signal) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			case <-interrupts:
			}
			id, client, count := w.interrupt()
			if count > 1 || id == "" {
				w.cancel()
				return
			}
			w.printer.Infof("cancelling build %s (interrupt again to stop waiting)", id)
			wg.Add(1)
			go func() {
				defer wg.Done()
				// A second interrupt ends ctx but not the request: the
				// command says the farm goes on cancelling the build, and
				// waits (up to cancelTimeout) for the request to be sent.
				cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cancelTimeout)
				defer cancel()
				if _, err := client.Cancel(cctx, id); err != nil {
					w.printer.Errorf("cancelling build %s: %v", id, err)
				}
			}()
		}
	}()
	return func() {
		close(done)
		wg.Wait()
	}
}

// interrupt counts an interrupt and returns the started build's id (""
// before it started), the client to cancel it with, and the count.
func (w *buildInterrupts) interrupt() (string, *kiln.Client, int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.count++
	if w.buildID == "" {
		// Nothing to cancel on the farm: the command stops.
		w.count = 2
	}
	return w.buildID, w.client, w.count
}

// attach gives the watch the client that cancels the build.
func (w *buildInterrupts) attach(client *kiln.Client) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.client = client
}

// started tells the watch the id of the build the command started.
func (w *buildInterrupts) started(buildID string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buildID = buildID
}

// cancelled reports whether an interrupt asked the farm to cancel the
// build.
func (w *buildInterrupts) cancelled() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.count >= 1 && w.buildID != ""
}

// stopped reports whether an interrupt stopped the command: a second one,
// or one before the build started.
func (w *buildInterrupts) stopped() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.count >= 2
}

// id is the started build's id ("" before it started).
func (w *buildInterrupts) id() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buildID
}
