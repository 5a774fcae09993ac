// Package platforms is the rule for a build's target platforms
// (BuildSpec.platforms, buildx --platform): the CLI and SDK parse and check
// them before they send a build, the gateway when it accepts one, agents
// spell their own platforms with it and the scheduler routes by it.
package platforms

import (
	"slices"
	"strings"

	"github.com/kilnbuild/kiln/proto/rules"
)

// Max is how many platforms one build may ask for.
const Max = 16

// archAliases are the architecture spellings engines and uname use, with
// the name OCI image indexes (and buildx) use for each.
var archAliases = map[string]string{
	"x86_64": "amd64", "x86-64": "amd64", "aarch64": "arm64", "armhf": "arm/v7", "armel": "arm/v6",
	"i386": "386", "i686": "386", "ppc64el": "ppc64le",
}

// knownArch are the architectures (with variant) buildx names.
var knownArch = []string{
	"amd64", "amd64/v2", "amd64/v3", "amd64/v4", "arm64", "arm64/v8", "arm/v5", "arm/v6", "arm/v7",
	"386", "ppc64le", "s390x", "riscv64", "mips64le", "mips64", "loong64",
}

// Normalize spells one platform as an image index does: "linux/x86_64" and
// "linux/amd64" give "linux/amd64", "linux/aarch64" and "linux/arm64/v8"
// give "linux/arm64", a bare "arm64" gives "linux/arm64". Its errors match
// rules.ErrInvalid and name the platform.
func Normalize(p string) (string, error) {
	s := strings.ToLower(strings.TrimSpace(p))
	if s == "" {
		return "", rules.Invalidf("empty platform: give one such as linux/amd64")
	}
	parts := strings.SplitN(s, "/", 2)
	osName, arch := parts[0], ""
	if len(parts) == 1 {
		osName, arch = "linux", parts[0]
	} else {
		arch = parts[1]
	}
	if osName != "linux" {
		return "", rules.Invalidf("platform %q: the farm builds Linux images only (linux/amd64, linux/arm64, ...)", p)
	}
	if a, ok := archAliases[arch]; ok {
		arch = a
	}
	if arch == "arm64/v8" {
		arch = "arm64"
	}
	if arch == "arm" {
		arch = "arm/v7"
	}
	if !slices.Contains(knownArch, arch) {
		return "", rules.Invalidf("platform %q: unknown architecture %q (known: %s)", p, arch, strings.Join(knownArch, ", "))
	}
	return osName + "/" + arch, nil
}

// Parse reads --platform values as buildx does: each may be a
// comma-separated list; the result is normalised, in order, without
// duplicates, and at most Max long. Its errors match rules.ErrInvalid.
func Parse(values []string) ([]string, error) {
	var out []string
	for _, v := range values {
		for _, p := range strings.Split(v, ",") {
			n, err := Normalize(p)
			if err != nil {
				return nil, err
			}
			if !slices.Contains(out, n) {
				out = append(out, n)
			}
		}
	}
	if len(out) > Max {
		return nil, rules.Invalidf("%d platforms: a build may ask for at most %d", len(out), Max)
	}
	return out, nil
}

// Check reports whether a build spec's platforms are as Parse leaves them:
// each normalised, no duplicates, at most Max.
func Check(ps []string) error {
	if len(ps) > Max {
		return rules.Invalidf("%d platforms: a build may ask for at most %d", len(ps), Max)
	}
	for i, p := range ps {
		n, err := Normalize(p)
		if err != nil {
			return err
		}
		if n != p {
			return rules.Invalidf("platform %q: spell it %q", p, n)
		}
		if slices.Contains(ps[:i], p) {
			return rules.Invalidf("platform %q is given twice", p)
		}
	}
	return nil
}

// Native is the platform of an engine that reports its OS and architecture
// as it spells them ("linux", "x86_64"); "" when it cannot be named.
func Native(osName, arch string) string {
	if osName == "" || arch == "" {
		return ""
	}
	n, err := Normalize(osName + "/" + arch)
	if err != nil {
		return ""
	}
	return n
}

// binfmtArch maps qemu-user's binfmt_misc handler names (Debian's
// qemu-user-static and tonistiigi/binfmt register "qemu-<arch>") to the
// platform each emulates.
var binfmtArch = map[string]string{
	"qemu-aarch64": "linux/arm64", "qemu-arm": "linux/arm/v7", "qemu-x86_64": "linux/amd64",
	"qemu-i386": "linux/386", "qemu-ppc64le": "linux/ppc64le", "qemu-s390x": "linux/s390x",
	"qemu-riscv64": "linux/riscv64", "qemu-mips64el": "linux/mips64le", "qemu-mips64": "linux/mips64",
	"qemu-loongarch64": "linux/loong64",
}

// FromBinfmt is the platform a binfmt_misc handler named name emulates
// ("qemu-aarch64" → "linux/arm64"; "" for other handlers).
func FromBinfmt(name string) string { return binfmtArch[name] }

// Emulated returns the platforms in emulated that are not native, in
// order and without duplicates: what an agent advertises as
// Agent.emulated_platforms.
func Emulated(native, emulated []string) []string {
	var out []string
	for _, p := range emulated {
		if p != "" && !slices.Contains(native, p) && !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	return out
}

// Tag is how a platform appears in names (labels, lineages):
// "linux/arm/v7" → "linux-arm-v7".
func Tag(p string) string { return strings.ReplaceAll(p, "/", "-") }

// CheckSpec is Check plus what a build naming several platforms needs:
// somewhere for its result to go, since its platforms' images are built on
// different agents — pushing (they meet in the registry as one index), or
// exporting their files (--output type=local|tar: one directory per
// platform); exported says the build does the latter.
func CheckSpec(ps []string, push, exported bool) error {
	if err := Check(ps); err != nil {
		return err
	}
	if len(ps) > 1 && !push && !exported {
		return rules.Invalidf("a build for several platforms (%s) pushes its images and an index referencing them, or exports their files: add --push (or --output type=registry) and a --tag, or --output type=local|tar", strings.Join(ps, ", "))
	}
	return nil
}
