package kiln_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/kilnbuild/kiln/sdk/internal/farmtest"
)

// farmAddr is the gateway of the real farm (kilnd, building on the local
// Docker engine) that the examples and the tests of package kiln_test
// build on. TestMain starts it.
var farmAddr string

// kilndStartTimeout bounds building and starting kilnd.
const kilndStartTimeout = 5 * time.Minute

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	ctx, cancel := context.WithTimeout(context.Background(), kilndStartTimeout)
	k, err := farmtest.StartKilnd(ctx)
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer k.Stop()
	farmAddr = k.Addr
	code := m.Run()
	if code != 0 {
		lines := strings.Split(k.Logs(), "\n")
		fmt.Fprintf(os.Stderr, "kilnd's last log lines:\n%s\n", strings.Join(lines[max(0, len(lines)-80):], "\n"))
	}
	return code
}
