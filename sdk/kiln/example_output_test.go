package kiln_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/sdk/kiln"
)

// Build with an output (buildx --output type=local) and write the
// result's files into a directory.
func ExampleClient_DownloadOutput() {
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
		Spec:    &kilnv1.BuildSpec{Outputs: []*kilnv1.Output{{Type: "local"}}},
	})
	if err != nil {
		log.Fatal(err)
	}
	record, err := build.Wait(ctx)
	if err != nil {
		log.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "kiln-output-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	if _, err := client.DownloadOutput(ctx, record, kiln.OutputTarget{Path: dir}); err != nil {
		log.Fatal(err)
	}
	hello, err := os.ReadFile(filepath.Join(dir, "hello.txt"))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Print(string(hello))
	// Output:
	// hello from kiln
}
