package engine_test

import (
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kilnbuild/kiln/agent/engine"
	"github.com/kilnbuild/kiln/agent/enginetest"
)

func TestParseAddress(t *testing.T) {
	for _, tc := range []struct {
		in, kind, addr, err string
	}{
		{in: "docker:///var/run/docker.sock", kind: "docker", addr: "unix:///var/run/docker.sock"},
		{in: "docker://10.0.0.5:2376", kind: "docker", addr: "tcp://10.0.0.5:2376"},
		{in: "buildkit:///run/buildkit/buildkitd.sock", kind: "buildkit", addr: "unix:///run/buildkit/buildkitd.sock"},
		{in: "buildkit://h:1234", kind: "buildkit", addr: "tcp://h:1234"},
		{in: "buildkit://[::1]:1234", kind: "buildkit", addr: "tcp://[::1]:1234"},
		{in: "unix:///run/user/1000/buildkit/buildkitd.sock", addr: "unix:///run/user/1000/buildkit/buildkitd.sock"},
		{in: "tcp://localhost:2375", addr: "tcp://localhost:2375"},
		{in: "", err: "want docker://"},
		{in: "/var/run/docker.sock", err: "want docker://"},
		{in: "http://h:80", err: `scheme "http" is not supported`},
		{in: "ssh://me@h", err: `scheme "ssh" is not supported`},
		{in: "buildkit://", err: "want host:port"},
		{in: "buildkit://h", err: "want host:port"},
		{in: "tcp://h:0", err: "not a number from 1 to 65535"},
		{in: "tcp://h:65536", err: "not a number from 1 to 65535"},
		{in: "tcp://h:+80", err: "not a number from 1 to 65535"},
		{in: "tcp://:80", err: "is not a host name"},
		{in: "tcp://me@h:80", err: "is not a host name"},
		{in: "tcp://h:80/path", err: "not a number"},
		{in: "unix://", err: "absolute socket path"},
		{in: "unix://relative.sock", err: "absolute socket path"},
		{in: "unix:///", err: "absolute socket path"},
		{in: "unix:///run/", err: "absolute socket path"},
		{in: "docker:///var/run/docker sock", err: "space or control character"},
		{in: "unix:///a\x00b", err: "space or control character"},
	} {
		kind, addr, err := engine.ParseAddress(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParseAddress(%q) = %q, %q, %v; want an error with %q", tc.in, kind, addr, err, tc.err)
			}
			continue
		}
		if err != nil || kind != tc.kind || addr != tc.addr {
			t.Errorf("ParseAddress(%q) = %q, %q, %v; want %q, %q", tc.in, kind, addr, err, tc.kind, tc.addr)
		}
	}
}

func FuzzParseAddress(f *testing.F) {
	for _, s := range []string{"docker:///var/run/docker.sock", "buildkit://h:1234", "tcp://[::1]:2", "unix:///x", "tcp://h:0", "x://y"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		kind, addr, err := engine.ParseAddress(s)
		if err != nil {
			if kind != "" || addr != "" {
				t.Fatalf("ParseAddress(%q) failed with %q, %q", s, kind, addr)
			}
			return
		}
		if kind != "" && kind != engine.KindDocker && kind != engine.KindBuildKit {
			t.Fatalf("ParseAddress(%q): kind %q", s, kind)
		}
		if !strings.HasPrefix(addr, "unix:///") && !strings.HasPrefix(addr, "tcp://") {
			t.Fatalf("ParseAddress(%q): addr %q", s, addr)
		}
		// The address it gives reads back as itself, kind left to Probe.
		k2, a2, err := engine.ParseAddress(addr)
		if err != nil || k2 != "" || a2 != addr {
			t.Fatalf("ParseAddress(%q) = %q; reading that back: %q, %q, %v", s, addr, k2, a2, err)
		}
		if kind != "" {
			_, rest, _ := strings.Cut(addr, "://")
			if k3, a3, err := engine.ParseAddress(kind + "://" + rest); err != nil || k3 != kind || a3 != addr {
				t.Fatalf("ParseAddress(%q) = %q, %q; %s://%s reads as %q, %q, %v", s, kind, addr, kind, rest, k3, a3, err)
			}
		}
	})
}

func TestProbe(t *testing.T) {
	t.Parallel()
	d := startBuildKitd(t)
	for _, tc := range []struct{ addr, want string }{
		{d.Addr(), engine.KindBuildKit},
		{enginetest.Docker(t).Host(), engine.KindDocker},
		{"buildkit:///nowhere.sock", engine.KindBuildKit}, // named: not asked
	} {
		got, err := engine.Probe(t.Context(), tc.addr)
		if err != nil || got != tc.want {
			t.Errorf("Probe(%s) = %q, %v; want %q", tc.addr, got, err, tc.want)
		}
	}

	// Something that is neither: a listener that closes every connection.
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "other.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if got, err := engine.Probe(ctx, "unix://"+l.Addr().String()); err == nil || !strings.Contains(err.Error(), "neither a Docker engine") {
		t.Fatalf("Probe of a socket that answers nothing = %q, %v", got, err)
	}
}
