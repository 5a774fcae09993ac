package enginetest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestStartBuildKitd starts a rootful and a rootless buildkitd, builds a
// FROM-scratch Dockerfile on each with the pinned buildctl, pushing it to
// the registry, and checks the registry holds the digest the build
// reported, the daemon runs as the right user with step logs unclipped,
// and Stop ends the daemon and removes its state.
func TestStartBuildKitd(t *testing.T) {
	reg := Registry(t)
	for _, rootless := range []bool{false, true} {
		name := "rootful"
		if rootless {
			name = "rootless"
		}
		t.Run(name, func(t *testing.T) {
			b := StartBuildKitd(t, BuildKitdOptions{Rootless: rootless})
			if !strings.HasPrefix(b.Addr, "unix://"+b.StateDir+"/") {
				t.Fatalf("Addr = %q, want a socket in %s", b.Addr, b.StateDir)
			}
			if b.Rootless != rootless {
				t.Fatalf("Rootless = %v, want %v", b.Rootless, rootless)
			}

			wantUser := "root"
			if rootless {
				wantUser = "kiln-rootless"
			}
			if got := processUser(t, b.Pid); got != wantUser {
				t.Errorf("buildkitd (pid %d) runs as %s, want %s", b.Pid, got, wantUser)
			}
			environ, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(b.Pid), "environ"))
			if err != nil {
				t.Fatal(err)
			}
			for _, kv := range []string{"BUILDKIT_STEP_LOG_MAX_SIZE=1073741824", "BUILDKIT_STEP_LOG_MAX_SPEED=1073741824"} {
				if !strings.Contains("\x00"+string(environ)+"\x00", "\x00"+kv+"\x00") {
					t.Errorf("buildkitd's environment lacks %s", kv)
				}
			}

			ctxDir := t.TempDir()
			token := bkRandomHex(t)
			writeFile(t, filepath.Join(ctxDir, "Dockerfile"), "FROM scratch\nCOPY hello.txt /hello.txt\n")
			writeFile(t, filepath.Join(ctxDir, "hello.txt"), "hello "+token+"\n")
			repo := "kiln-test/buildkitd-" + name
			tag := token[:12]
			meta := filepath.Join(t.TempDir(), "metadata.json")
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, b.Buildctl, "--addr", b.Addr, "build",
				"--frontend", "dockerfile.v0",
				"--local", "context="+ctxDir, "--local", "dockerfile="+ctxDir,
				"--output", "type=image,name="+reg+"/"+repo+":"+tag+",push=true",
				"--metadata-file", meta, "--progress", "plain")
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("buildctl build: %v\n%s\nbuildkitd log:\n%s", err, out, b.Log())
			}
			var md struct {
				Digest string `json:"containerimage.digest"`
			}
			body, err := os.ReadFile(meta)
			if err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(body, &md); err != nil || md.Digest == "" {
				t.Fatalf("buildctl's metadata names no image digest (%v): %s", err, body)
			}
			if got := ManifestDigest(t, reg, repo, tag); got != md.Digest {
				t.Errorf("registry has %s:%s at %s, buildctl pushed %s", repo, tag, got, md.Digest)
			}

			pid, dir := b.Pid, b.StateDir
			if err := b.Stop(); err != nil {
				t.Fatal(err)
			}
			if err := syscall.Kill(pid, 0); err == nil && processState(pid) != "Z" {
				t.Errorf("buildkitd (pid %d) still runs after Stop", pid)
			}
			if _, err := os.Stat(dir); !os.IsNotExist(err) {
				t.Errorf("state directory %s still there after Stop (%v)", dir, err)
			}
			if err := b.Stop(); err != nil {
				t.Errorf("second Stop: %v", err)
			}
		})
	}
}

// processUser returns the name of the real user pid runs as.
func processUser(t *testing.T, pid int) string {
	t.Helper()
	status, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "Uid:" {
			u, err := user.LookupId(f[1])
			if err != nil {
				t.Fatal(err)
			}
			return u.Username
		}
	}
	t.Fatalf("no Uid line in /proc/%d/status", pid)
	return ""
}

// processState returns pid's state letter ("Z" for a zombie), "" if gone.
func processState(pid int) string {
	stat, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return ""
	}
	s := string(stat)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+3 < len(s) {
		return s[i+2 : i+3]
	}
	return ""
}

func bkRandomHex(t *testing.T) string {
	t.Helper()
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}
