package cli

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/kilnbuild/kiln/sdk/internal/progress"
	"github.com/kilnbuild/kiln/sdk/kiln"
)

// cancelTimeout bounds the Cancel call made on the first interrupt.
const cancelTimeout = 15 * time.Second

// runBuild packs, uploads, starts and watches one build and returns the
// exit code.
func (a *App) runBuild(ctx context.Context, o *buildOptions) int {
	pr := progress.New(o.progress.Resolve(a.StderrIsTerminal), a.Stdout, a.Stderr)
	pr.SetWidth(a.TerminalWidth)
	pr.SetTerminal(a.StderrIsTerminal)
	defer pr.Close()

	// The client is closed last, after the interrupt watch stopped: a
	// Cancel it sent may still be running until then.
	var client *kiln.Client
	defer func() {
		if client != nil {
			client.Close()
		}
	}()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	watch := &interruptWatch{printer: pr, cancel: cancel}
	stop := watch.start(ctx, a.Interrupts)
	defer stop()

	bc, err := kiln.PackContext(ctx, o.contextDir, o.dockerfile, kiln.WithHashProgress(func(p kiln.ContextProgress) {
		pr.ContextProgress("Hashing", p.Files, p.TotalFiles, p.Bytes, p.TotalBytes)
	}))
	if err != nil {
		return a.fail(pr, o, watch, err, "cannot reach the kiln gateway at %s")
	}

	opts := append([]kiln.Option{kiln.WithDialOptions(o.trace.dialOptions()...)}, o.opts...)
	client, err = kiln.Dial(ctx, o.gateway, opts...)
	if err != nil {
		pr.Errorf("%v", err)
		return ExitUsage
	}
	watch.attach(client)

	uploaded, err := client.UploadContext(ctx, bc, kiln.WithUploadProgress(func(p kiln.ContextProgress) {
		pr.ContextProgress("Uploading", p.Files, p.TotalFiles, p.Bytes, p.TotalBytes)
	}))
	if err != nil {
		return a.fail(pr, o, watch, err, "cannot reach the kiln gateway at %s")
	}
	pr.ContextSummary(uploaded.Files, uploaded.Bytes, uploaded.UploadedBytes)

	spec := o.spec
	dockerfile, _ := os.ReadFile(filepath.Join(bc.Dir(), bc.Dockerfile())) // PackContext has read it
	creds, err := lookupRegistryCredentials(ctx, registryHosts(spec, dockerfile), a.lookupEnv(), runCredentialHelper)
	if err != nil {
		pr.Errorf("%v", err)
		return ExitUsage
	}
	b, err := client.Build(ctx, kiln.BuildRequest{Spec: spec, Context: bc, IdempotencyKey: o.idempotencyKey, Secrets: o.secrets, RegistryAuth: creds})
	if err != nil {
		return a.fail(pr, o, watch, err, "cannot reach the kiln gateway at %s")
	}
	watch.started(b.ID())
	o.trace.buildStarted(b.ID())

	for ev := range b.Events() {
		pr.Event(ev.Proto())
	}
	final, err := b.Wait(ctx)
	var failed *kiln.BuildFailedError
	if errors.As(err, &failed) || errors.Is(err, kiln.ErrCancelled) || errors.Is(err, kiln.ErrTimedOut) {
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
// cancels the build on the farm (or, before the build started, the hashing
// or the upload) and keeps following it to its end; the second stops at
// once.
type interruptWatch struct {
	printer *progress.Printer
	// cancel stops the command's context.
	cancel context.CancelFunc

	mu      sync.Mutex // guards the fields below
	client  *kiln.Client
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
			id, client := w.current()
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
				if _, err := client.Cancel(cctx, id); err != nil && ctx.Err() == nil {
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

// attach gives the watch the client that cancels the build.
func (w *interruptWatch) attach(client *kiln.Client) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.client = client
}

func (w *interruptWatch) started(buildID string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buildID = buildID
}

// current returns the started build's id ("" before StartBuild) and the
// client to cancel it with.
func (w *interruptWatch) current() (string, *kiln.Client) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buildID, w.client
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
