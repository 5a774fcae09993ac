module github.com/kilnbuild/kiln/sdk

go 1.26.0

require (
	github.com/kilnbuild/kiln/proto v0.0.0-00010101000000-000000000000
	github.com/moby/patternmatcher v0.6.1
	github.com/spf13/pflag v1.0.10
	golang.org/x/crypto v0.58.0
	golang.org/x/sync v0.25.0
	golang.org/x/term v0.47.0
	google.golang.org/grpc v1.85.0
	google.golang.org/protobuf v1.36.12
)

require (
	golang.org/x/net v0.60.0 // indirect
	golang.org/x/sys v0.49.0 // indirect
	golang.org/x/text v0.43.0 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20260817212433-ac3dfec99bb1 // indirect
)

replace github.com/kilnbuild/kiln/proto => ../proto
