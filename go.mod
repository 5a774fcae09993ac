module github.com/kilnbuild/kiln

go 1.26.0

replace (
	github.com/kilnbuild/kiln/proto => ./proto
	github.com/kilnbuild/kiln/services => ./services
	github.com/kilnbuild/kiln/gateway => ./gateway
	github.com/kilnbuild/kiln/scheduler => ./scheduler
	github.com/kilnbuild/kiln/agent => ./agent
	github.com/kilnbuild/kiln/sdk => ./sdk
)
