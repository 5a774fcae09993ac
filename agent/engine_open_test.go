package agent

import (
	"context"
	"strings"
	"testing"

	"github.com/kilnbuild/kiln/agent/engine"
	"github.com/kilnbuild/kiln/agent/enginetest"
)

// TestOpenEngine: --engine URLs open the engine they name, and a plain
// unix:// address is asked which kind it is; wrong combinations are
// refused saying why.
func TestOpenEngine(t *testing.T) {
	bk := enginetest.StartBuildKitd(t, enginetest.BuildKitdOptions{})
	sock := strings.TrimPrefix(bk.Addr, "unix://")
	docker := enginetest.Docker(t).Host()
	for _, tc := range []struct {
		o    EngineOptions
		want string
	}{
		{EngineOptions{Engine: "buildkit://" + sock}, engine.KindBuildKit},
		{EngineOptions{Engine: bk.Addr}, engine.KindBuildKit}, // asked
		{EngineOptions{Engine: docker}, engine.KindDocker},    // asked
		{EngineOptions{Engine: "docker://" + strings.TrimPrefix(docker, "unix://")}, engine.KindDocker},
		{EngineOptions{DockerHost: docker}, engine.KindDocker}, // the older flag
		{EngineOptions{}, engine.KindDocker},                   // DOCKER_HOST, else the local socket
	} {
		e, err := tc.o.openEngine(t.Context())
		if err != nil {
			t.Fatalf("%+v: %v", tc.o, err)
		}
		info, err := e.Info(t.Context())
		e.Close()
		if err != nil {
			t.Fatalf("%+v: Info: %v", tc.o, err)
		}
		if info.Kind != tc.want {
			t.Fatalf("%+v: an engine of kind %q, want %q", tc.o, info.Kind, tc.want)
		}
	}
	for _, tc := range []struct {
		o    EngineOptions
		want string
	}{
		{EngineOptions{Engine: "docker://" + strings.TrimPrefix(docker, "unix://"), EngineTLSCA: "/ca.pem"}, "DOCKER_TLS_VERIFY"},
		{EngineOptions{Engine: "ftp://h:1"}, "not supported"},
		{EngineOptions{Engine: "unix:///nonexistent/engine.sock"}, "neither"},
	} {
		e, err := tc.o.openEngine(context.Background())
		if err == nil {
			e.Close()
			t.Fatalf("%+v: opened, want an error saying %q", tc.o, tc.want)
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Fatalf("%+v: %v, want it to say %q", tc.o, err, tc.want)
		}
	}
}
