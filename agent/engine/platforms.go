package engine

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"

	"github.com/kilnbuild/kiln/proto/rules/platforms"
)

// BinfmtDir is where the Linux kernel lists the binfmt_misc handlers
// registered on this host (Debian's qemu-user-static, tonistiigi/binfmt).
const BinfmtDir = "/proc/sys/fs/binfmt_misc"

// BinfmtPlatforms are the platforms this host's enabled qemu binfmt_misc
// handlers in dir emulate, sorted by handler name: a Docker engine on this
// host builds for them under emulation. A missing or unmounted dir gives
// none.
func BinfmtPlatforms(dir string) []string {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range entries {
		p := platforms.FromBinfmt(e.Name())
		if p == "" || !binfmtEnabled(filepath.Join(dir, e.Name())) {
			continue
		}
		out = append(out, p)
	}
	return out
}

// binfmtEnabled reports whether the handler file at path says "enabled"
// on its first line.
func binfmtEnabled(path string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	return sc.Scan() && strings.TrimSpace(sc.Text()) == "enabled"
}

// nonEmptyList is {s}, or nil for "".
func nonEmptyList(s string) []string {
	if s == "" {
		return nil
	}
	return []string{s}
}
