// Command kiln builds container images on a kiln build farm:
//
//	kiln build -t registry.example.com/app:1 --push .
//
// See `kiln build --help`; the logic lives in sdk/internal/cli.
package main

import (
	"os"

	"github.com/kilnbuild/kiln/sdk/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:]))
}
