package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/kilnbuild/kiln/sdk/internal/progress"
	"github.com/kilnbuild/kiln/sdk/kiln"
)

// cancelTimeout bounds the CancelBuild call made on the first interrupt.
const cancelTimeout = 15 * time.Second

// runBuild packs, uploads, starts and watches one build and returns the
// exit code.
func (a *App) runBuild(ctx context.Context, o *buildOptions) int {
	pr := progress.New(o.progress.Resolve(a.StderrIsTerminal), a.Stdout, a.Stderr)
	pr.SetWidth(a.TerminalWidth)
	defer pr.Close()

	bc, err := kiln.PackContext(o.contextDir, o.dockerfile)
	if err != nil {
		pr.Errorf("%v", err)
		return ExitCode(err)
	}
	defer bc.Close()
	pr.Infof("context %s: %d files, %s, %s", bc.Dir(), bc.Files(), humanBytes(bc.Size()), bc.Digest())

	var opts []kiln.Option
	if o.token != "" {
		opts = append(opts, kiln.WithToken(o.token))
	}
	client, err := kiln.Dial(o.gateway, opts...)
	if err != nil {
		pr.Errorf("%v", err)
		return ExitUsage
	}
	defer client.Close()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	watch := &interruptWatch{client: client, printer: pr, cancel: cancel}
	stop := watch.start(ctx, a.Interrupts)
	defer stop()

	uploaded, err := client.UploadContext(ctx, bc)
	if err != nil {
		return a.fail(pr, o, watch, err, "cannot reach the kiln gateway at %s")
	}
	if uploaded > 0 {
		pr.Infof("uploaded context: %s", humanBytes(uploaded))
	} else {
		pr.Infof("context already on the farm")
	}

	spec := o.spec
	b, err := client.StartBuild(ctx, kiln.BuildRequest{Spec: spec, Context: bc, IdempotencyKey: o.idempotencyKey})
	if err != nil {
		return a.fail(pr, o, watch, err, "cannot reach the kiln gateway at %s")
	}
	watch.started(b.GetId())

	final, err := client.WatchBuild(ctx, b.GetId(), 0, pr.Event)
	var be *kiln.BuildError
	if errors.As(err, &be) {
		// The printer has shown the failure with the finished event.
		return ExitFailed
	}
	if err != nil {
		return a.fail(pr, o, watch, err, "lost the connection to the kiln gateway at %s")
	}

	if o.metadataFile != "" {
		if err := writeMetadataFile(o.metadataFile, final, spec.GetTags()); err != nil {
			pr.Errorf("%v", err)
			return ExitFailed
		}
	}
	if o.iidFile != "" {
		if err := writeIIDFile(o.iidFile, final); err != nil {
			pr.Errorf("%v", err)
			return ExitFailed
		}
	}
	return ExitOK
}

// fail reports err and returns its exit code; unreachable is the message
// used when the gateway cannot be reached.
func (a *App) fail(pr *progress.Printer, o *buildOptions, w *interruptWatch, err error, unreachable string) int {
	if w.interrupted() {
		if id := w.id(); id != "" {
			pr.Errorf("interrupted: stopped following build %s after requesting its cancellation", id)
		} else {
			pr.Errorf("interrupted before the build started")
		}
		return ExitFailed
	}
	code := ExitCode(err)
	if code == ExitUnreachable {
		pr.Errorf(unreachable+": %v", o.gateway, err)
		return code
	}
	pr.Errorf("%v", err)
	return code
}

// interruptWatch turns interrupts into build cancellation: the first one
// cancels the build on the farm (or the upload, before the build started)
// and keeps following it to its end; the second stops at once.
type interruptWatch struct {
	client  *kiln.Client
	printer *progress.Printer
	// cancel stops the command's context.
	cancel context.CancelFunc

	mu      sync.Mutex // guards the fields below
	buildID string
	stopped bool
}

// start follows interrupts until the returned stop function is called;
// stop waits for the goroutines start began.
func (w *interruptWatch) start(ctx context.Context, interrupts <-chan os.Signal) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		count := 0
		for {
			select {
			case <-done:
				return
			case <-interrupts:
			}
			count++
			id := w.id()
			if count > 1 || id == "" {
				w.stop()
				return
			}
			w.printer.Infof("cancelling build %s (interrupt again to stop waiting)", id)
			wg.Add(1)
			go func() {
				defer wg.Done()
				cctx, cancel := context.WithTimeout(ctx, cancelTimeout)
				defer cancel()
				if _, err := w.client.CancelBuild(cctx, id); err != nil && ctx.Err() == nil {
					w.printer.Errorf("%v (interrupt again to stop waiting)", err)
				}
			}()
		}
	}()
	return func() {
		close(done)
		wg.Wait()
	}
}

func (w *interruptWatch) started(buildID string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buildID = buildID
}

func (w *interruptWatch) id() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buildID
}

func (w *interruptWatch) stop() {
	w.mu.Lock()
	w.stopped = true
	w.mu.Unlock()
	w.cancel()
}

func (w *interruptWatch) interrupted() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.stopped
}

// humanBytes formats n like "3.4 MiB".
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
