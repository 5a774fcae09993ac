package kiln_test

import (
	"context"
	"errors"
	"fmt"
	"log"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/sdk/kiln"
)

// The examples build on a real farm: farmAddr is its gateway, "host:port"
// (TestMain starts one). testdata/hello holds a Dockerfile and a file it
// copies; testdata/failing a Dockerfile whose last step fails.

// Build an image and push it, then print how the build ended.
func ExampleClient_Build() {
	ctx := context.Background()
	client, err := kiln.Dial(ctx, farmAddr)
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	bc, err := kiln.PackContext(ctx, "testdata/hello", "Dockerfile")
	if err != nil {
		log.Fatal(err)
	}
	build, err := client.Build(ctx, kiln.BuildRequest{
		Context: bc,
		Spec: &kilnv1.BuildSpec{
			Tags: []string{"127.0.0.1:5000/kiln-sdk-example/hello:latest"},
			Push: true,
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	record, err := build.Wait(ctx)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(record.GetState())
	for _, p := range record.GetResult().GetPushed() {
		fmt.Println("pushed", p.GetTag())
	}
	// Output:
	// BUILD_STATE_SUCCEEDED
	// pushed 127.0.0.1:5000/kiln-sdk-example/hello:latest
}

// Follow a build's steps and output as they happen.
func ExampleBuild_Events() {
	ctx := context.Background()
	client, err := kiln.Dial(ctx, farmAddr)
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	bc, err := kiln.PackContext(ctx, "testdata/hello", "Dockerfile")
	if err != nil {
		log.Fatal(err)
	}
	build, err := client.Build(ctx, kiln.BuildRequest{
		Context: bc,
		Spec:    &kilnv1.BuildSpec{NoCache: true},
	})
	if err != nil {
		log.Fatal(err)
	}
	for ev := range build.Events() {
		switch ev := ev.(type) {
		case *kiln.StepStarted:
			fmt.Printf("[%d/%d] %s\n", ev.Step, ev.Total, ev.Instruction)
		case *kiln.LogLine:
			if ev.Step != 0 { // the step's own output, not the farm's lines
				fmt.Println("      " + ev.Text)
			}
		case *kiln.Finished:
			fmt.Println(ev.State)
		}
	}
	if _, err := build.Wait(ctx); err != nil {
		log.Fatal(err)
	}
	// Output:
	// [1/3] FROM 127.0.0.1:5000/kiln/busybox:1
	// [2/3] COPY hello.txt /
	// [3/3] RUN cat /hello.txt
	//       hello from kiln
	// BUILD_STATE_SUCCEEDED
}

// Tell a failed build from a cancelled one, and show the failing step.
func ExampleBuild_Wait() {
	ctx := context.Background()
	client, err := kiln.Dial(ctx, farmAddr)
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	bc, err := kiln.PackContext(ctx, "testdata/failing", "Dockerfile")
	if err != nil {
		log.Fatal(err)
	}
	build, err := client.Build(ctx, kiln.BuildRequest{Context: bc, Spec: &kilnv1.BuildSpec{NoCache: true}})
	if err != nil {
		log.Fatal(err)
	}
	_, err = build.Wait(ctx)
	var failed *kiln.BuildFailedError
	switch {
	case errors.As(err, &failed):
		fmt.Printf("step %d failed: %s\n", failed.Step, failed.Instruction)
		for _, line := range failed.Output {
			fmt.Println("  " + line)
		}
	case errors.Is(err, kiln.ErrCancelled):
		fmt.Println("cancelled")
	case errors.Is(err, kiln.ErrTimedOut):
		fmt.Println("timed out")
	case err != nil:
		log.Fatal(err) // the farm could not be reached
	}
	// Output:
	// step 3 failed: RUN echo "main.go:3: undefined: fmt.Printl" && exit 1
	//   main.go:3: undefined: fmt.Printl
}

// Read a build's log again from any event on, as `kiln logs` does: here
// the whole log of a build that has ended, then only its last event.
func ExampleClient_Watch() {
	ctx := context.Background()
	client, err := kiln.Dial(ctx, farmAddr)
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	bc, err := kiln.PackContext(ctx, "testdata/hello", "Dockerfile")
	if err != nil {
		log.Fatal(err)
	}
	started, err := client.Build(ctx, kiln.BuildRequest{Context: bc})
	if err != nil {
		log.Fatal(err)
	}
	if _, err := started.Wait(ctx); err != nil {
		log.Fatal(err)
	}

	var last uint64
	build, err := client.Watch(ctx, started.ID(), 0)
	if err != nil {
		log.Fatal(err)
	}
	for ev := range build.Events() {
		last = ev.Sequence()
	}
	build, err = client.Watch(ctx, started.ID(), last)
	if err != nil {
		log.Fatal(err)
	}
	for ev := range build.Events() {
		fmt.Printf("%T %v\n", ev, ev.Sequence() == last)
	}
	// Output:
	// *kiln.Finished true
}

// List the builds of one repository that succeeded, newest first, a page
// of two at a time.
func ExampleClient_List() {
	ctx := context.Background()
	client, err := kiln.Dial(ctx, farmAddr)
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	bc, err := kiln.PackContext(ctx, "testdata/hello", "Dockerfile")
	if err != nil {
		log.Fatal(err)
	}
	for range 3 {
		build, err := client.Build(ctx, kiln.BuildRequest{
			Context: bc,
			Spec:    &kilnv1.BuildSpec{Repository: "example.com/list-example"},
		})
		if err != nil {
			log.Fatal(err)
		}
		if _, err := build.Wait(ctx); err != nil {
			log.Fatal(err)
		}
	}

	n := 0
	for b, err := range client.List(ctx, kiln.ListFilter{
		Repository: "example.com/list-example",
		States:     []kilnv1.BuildState{kilnv1.BuildState_BUILD_STATE_SUCCEEDED},
		PageSize:   2,
	}) {
		if err != nil {
			log.Fatal(err)
		}
		n++
		fmt.Println(b.GetSpec().GetRepository(), b.GetState())
	}
	fmt.Println(n, "builds")
	// Output:
	// example.com/list-example BUILD_STATE_SUCCEEDED
	// example.com/list-example BUILD_STATE_SUCCEEDED
	// example.com/list-example BUILD_STATE_SUCCEEDED
	// 3 builds
}

// Show the farm's agents.
func ExampleClient_Agents() {
	ctx := context.Background()
	client, err := kiln.Dial(ctx, farmAddr)
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	agents, err := client.Agents(ctx)
	if err != nil {
		log.Fatal(err)
	}
	for _, a := range agents {
		fmt.Println(a.GetName())
	}
	// Output:
	// farmtest-agent
}
