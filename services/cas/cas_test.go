package cas_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"testing"

	"github.com/kilnbuild/kiln/services/bus/bustest"
	"github.com/kilnbuild/kiln/services/cas"
)

func digest(b []byte) string {
	s := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(s[:])
}

func TestPutVerifiesAndGetReturnsBytes(t *testing.T) {
	ctx := context.Background()
	s, err := cas.Open(ctx, bustest.Conn(t).JS)
	if err != nil {
		t.Fatal(err)
	}
	blob := bytes.Repeat([]byte("kiln "), 100_000)
	d := digest(blob)

	tests := []struct {
		name   string
		digest string
		size   int64
		body   []byte
		want   error
	}{
		{"wrong content", d, int64(len(blob)), append([]byte("x"), blob[1:]...), cas.ErrDigestMismatch},
		{"wrong size", d, int64(len(blob)) + 1, blob, cas.ErrDigestMismatch},
		{"malformed digest", "sha256:XYZ", int64(len(blob)), blob, cas.ErrBadDigest},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := s.Put(ctx, tc.digest, tc.size, bytes.NewReader(tc.body)); !errors.Is(err, tc.want) {
				t.Fatalf("Put = %v, want %v", err, tc.want)
			}
			if ok, _ := s.Has(ctx, d, -1); ok {
				t.Fatal("a refused blob was stored")
			}
		})
	}

	if err := s.Put(ctx, d, int64(len(blob)), bytes.NewReader(blob)); err != nil {
		t.Fatal(err)
	}
	if ok, err := s.Has(ctx, d, int64(len(blob))); err != nil || !ok {
		t.Fatalf("Has after Put = %v, %v", ok, err)
	}
	if ok, _ := s.Has(ctx, d, 1); ok {
		t.Fatal("Has matched a blob of another size")
	}
	r, err := s.Get(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	got, err := io.ReadAll(r)
	if err != nil || !bytes.Equal(got, blob) {
		t.Fatalf("Get returned %d bytes (%v), want the %d stored", len(got), err, len(blob))
	}
}

// Blobs read back the same whether they come from NATS or from the Store's
// memory of small blobs, on the Store that wrote them and on another one.
func TestSmallAndLargeBlobsReadBackFromEitherStore(t *testing.T) {
	ctx := context.Background()
	js := bustest.Conn(t).JS
	writer, err := cas.Open(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	reader, err := cas.Open(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	for _, size := range []int{0, 1, cas.SmallBlobBytes - 1, cas.SmallBlobBytes, cas.SmallBlobBytes + 1, 3 * cas.SmallBlobBytes} {
		blob := make([]byte, size)
		for i := range blob {
			blob[i] = byte(i*7 + size)
		}
		d := digest(blob)
		if err := writer.Put(ctx, d, int64(size), bytes.NewReader(blob)); err != nil {
			t.Fatalf("Put %d bytes: %v", size, err)
		}
		for name, s := range map[string]*cas.Store{"writer": writer, "reader": reader} {
			for round := range 2 { // the second read may come from memory
				if ok, err := s.Has(ctx, d, int64(size)); err != nil || !ok {
					t.Fatalf("%s: Has(%d bytes) round %d = %v, %v", name, size, round, ok, err)
				}
				if ok, _ := s.Has(ctx, d, int64(size)+1); ok {
					t.Fatalf("%s: Has matched %d bytes with the wrong size", name, size)
				}
				r, err := s.Get(ctx, d)
				if err != nil {
					t.Fatalf("%s: Get %d bytes: %v", name, size, err)
				}
				got, err := io.ReadAll(r)
				r.Close()
				if err != nil || !bytes.Equal(got, blob) {
					t.Fatalf("%s: Get %d bytes round %d returned %d bytes (err %v), not the blob", name, size, round, len(got), err)
				}
			}
		}
	}
}
