package engine

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"strings"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"
)

// RuncVerdict is what one start of the probe container says about the
// engine's runc and CVE-2024-21626 ("Leaky Vessels": runc before 1.1.12
// leaks a host directory's file descriptor into the container's init,
// and a working directory of /proc/self/fd/N then lands the container in
// the host's file system).
type RuncVerdict int

// RuncVerdicts, from the engine's answer to starting a container whose
// working directory is /proc/self/fd/N and whose command does not exist.
const (
	// RuncUnknown: the answer says neither (another runtime, another
	// error).
	RuncUnknown RuncVerdict = iota
	// RuncFixed: runc refused the working directory as outside the
	// container's root, the check the fix added.
	RuncFixed
	// RuncNoLeak: runc could not create or change to the directory (no
	// such descriptor, or not a directory): nothing leaked at this N.
	RuncNoLeak
	// RuncVulnerable: runc changed to the directory and failed only on
	// exec: a directory descriptor leaked into the container.
	RuncVulnerable
)

func (v RuncVerdict) String() string {
	switch v {
	case RuncFixed:
		return "fixed"
	case RuncNoLeak:
		return "no leak"
	case RuncVulnerable:
		return "vulnerable"
	}
	return "unknown"
}

// ClassifyRuncStart reads the engine's error for a start of the probe
// container. A start that succeeded (empty text) is unknown: the command
// the probe names does not exist anywhere.
func ClassifyRuncStart(errText string) RuncVerdict {
	s := strings.ToLower(errText)
	switch {
	case strings.Contains(s, "outside of container mount namespace root") || strings.Contains(s, "possible container breakout"):
		return RuncFixed
	case strings.Contains(s, "exec: ") || strings.Contains(s, "executable file not found") || strings.Contains(s, "exec format error"):
		return RuncVulnerable
	case strings.Contains(s, "chdir") || strings.Contains(s, "mkdir /proc/self/fd/"):
		// runc creates a missing working directory, then changes to it:
		// either failing means /proc/self/fd/N was no leaked directory.
		return RuncNoLeak
	}
	return RuncUnknown
}

// runcProbeFDs are the descriptors the probe tries: where runc before
// 1.1.12 leaks its cgroup directory under Docker (7, or 8 on some
// hosts). Each try costs a container start, about a second and a half.
var runcProbeFDs = []int{7, 8}

// ProbeRunc checks the engine's runc for CVE-2024-21626 by behaviour,
// not by version (distributions backport the fix: Debian's
// 1.1.5+ds1-1+deb12u1 has it): it imports an empty image (no registry
// needed), and for each descriptor N in runcProbeFDs creates and starts a
// container with working directory /proc/self/fd/N and a command that
// does not exist, then removes what it created. The verdict is
// RuncVulnerable if any start got past the working directory, RuncFixed
// or RuncNoLeak if every start was refused at it, RuncUnknown otherwise;
// detail is the engine's answer that decided it.
func (d *Docker) ProbeRunc(ctx context.Context) (verdict RuncVerdict, detail string, err error) {
	var suffix [6]byte
	_, _ = rand.Read(suffix[:])
	ref := "kiln-runc-probe:" + hex.EncodeToString(suffix[:])
	var empty bytes.Buffer
	if err := tar.NewWriter(&empty).Close(); err != nil {
		return RuncUnknown, "", err
	}
	rc, err := d.c.ImageImport(ctx, image.ImportSource{Source: &empty, SourceName: "-"}, ref, image.ImportOptions{})
	if err != nil {
		return RuncUnknown, "", fmt.Errorf("runc probe: import an empty image: %w", err)
	}
	_, err = io.Copy(io.Discard, rc)
	rc.Close()
	if err != nil {
		return RuncUnknown, "", fmt.Errorf("runc probe: import an empty image: %w", err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), removalGrace)
		defer cancel()
		_, _ = d.c.ImageRemove(cctx, ref, image.RemoveOptions{Force: true, PruneChildren: true})
	}()
	verdict = RuncNoLeak
	for _, fd := range runcProbeFDs {
		v, text, err := d.probeRuncFD(ctx, ref, fd)
		if err != nil {
			return RuncUnknown, "", err
		}
		switch {
		case v == RuncVulnerable:
			return v, text, nil
		case v == RuncUnknown:
			verdict, detail = RuncUnknown, text
		case v == RuncFixed && verdict != RuncUnknown:
			verdict, detail = RuncFixed, text
		case verdict == RuncNoLeak && detail == "":
			detail = text
		}
	}
	return verdict, detail, nil
}

// probeRuncFD creates, starts and removes one probe container.
func (d *Docker) probeRuncFD(ctx context.Context, ref string, fd int) (RuncVerdict, string, error) {
	created, err := d.c.ContainerCreate(ctx, &container.Config{
		Image:      ref,
		Cmd:        []string{"/kiln-runc-probe-no-such-command"},
		WorkingDir: fmt.Sprintf("/proc/self/fd/%d", fd),
		Labels:     map[string]string{"kiln.runc-probe": "1"},
	}, &container.HostConfig{NetworkMode: "none"}, nil, nil, "")
	if err != nil {
		return RuncUnknown, "", fmt.Errorf("runc probe: create a container: %w", err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), removalGrace)
		defer cancel()
		_ = d.c.ContainerRemove(cctx, created.ID, container.RemoveOptions{Force: true})
	}()
	err = d.c.ContainerStart(ctx, created.ID, container.StartOptions{})
	if ctx.Err() != nil {
		return RuncUnknown, "", ctx.Err()
	}
	if err == nil {
		return RuncUnknown, "the probe container started", nil
	}
	return ClassifyRuncStart(err.Error()), err.Error(), nil
}
