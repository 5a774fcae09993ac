package kiln_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/sdk/internal/farmtest"
	"github.com/kilnbuild/kiln/sdk/kiln"
)

// TestUploadContextBatchesSmallFiles uploads, to the real farm, a context
// of 400 one-line files (batches) and one file over BatchBlobMaxBytes (its
// own blob): every file reaches the build intact, and a second context
// sharing them uploads only its new file.
func TestUploadContextBatchesSmallFiles(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), buildTimeout)
	defer cancel()
	c := dialFarm(t)
	nonce := fmt.Sprint(time.Now().UnixNano())
	dir := t.TempDir()
	write := func(name, body string) {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	const n = 400
	for i := range n {
		write(fmt.Sprintf("files/f%03d.txt", i), fmt.Sprintf("line %d %s\n", i, nonce))
	}
	big := strings.Repeat(nonce+"\n", kiln.BatchBlobMaxBytes/len(nonce)+100)
	write("big.txt", big)
	write("Dockerfile", "FROM "+farmtest.BaseImage+"\nCOPY . /ctx/\n"+
		`RUN test "$(ls /ctx/files | wc -l)" = 400 && test "$(cat /ctx/files/f123.txt)" = "line 123 `+nonce+`" && test "$(wc -c < /ctx/big.txt)" = `+fmt.Sprint(len(big))+"\n")

	bc, err := kiln.PackContext(ctx, dir, "Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	st, err := c.UploadContext(ctx, bc)
	if err != nil {
		t.Fatal(err)
	}
	if st.Blobs != n+2 || st.PresentBytes != 0 {
		t.Fatalf("UploadContext of a new context = %+v, want %d blobs uploaded, none present", st, n+2)
	}
	b, err := c.Build(ctx, kiln.BuildRequest{Context: bc, Spec: &kilnv1.BuildSpec{NoCache: true}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Wait(ctx); err != nil {
		t.Fatalf("the build of the batched context: %v", err)
	}

	write("new.txt", "new "+nonce+"\n")
	bc, err = kiln.PackContext(ctx, dir, "Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	st, err = c.UploadContext(ctx, bc)
	if err != nil {
		t.Fatal(err)
	}
	if st.Blobs != 1 || st.UploadedBytes != int64(len("new "+nonce+"\n")) {
		t.Fatalf("UploadContext of a context sharing all but one file = %+v, want the new file only", st)
	}
}
