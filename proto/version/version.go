// Package version is the kiln version every binary reports: the CLI's
// "kiln version", and the gateway, scheduler and agent in GetFarmInfo.
// It is set at link time with
//
//	-ldflags "-X github.com/kilnbuild/kiln/proto/version.Version=v1.2.3"
//
// and otherwise taken from the module version Go stamped into the binary
// ("dev" for a build from a work tree without one).
package version

import "runtime/debug"

// Version is the link-time version ("" when not set).
var Version = ""

// String returns the version: Version, the main module's stamped version,
// or "dev".
func String() string {
	if Version != "" {
		return Version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}
