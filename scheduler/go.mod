module github.com/kilnbuild/kiln/scheduler

go 1.26.0

replace (
	github.com/kilnbuild/kiln/proto => ../proto
	github.com/kilnbuild/kiln/services => ../services
)
