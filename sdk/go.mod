module github.com/kilnbuild/kiln/sdk

go 1.26.0

replace (
	github.com/kilnbuild/kiln/proto => ../proto
)
