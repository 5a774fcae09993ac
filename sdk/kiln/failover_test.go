package kiln

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/sdk/internal/farmtest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
)

// twoGateways runs two gateways of one farm and a client of both.
func twoGateways(t *testing.T, opts ...farmtest.Option) (a, b *farmtest.Farm, client *Client) {
	t.Helper()
	a = farmtest.Start(t, opts...)
	b = farmtest.StartReplica(t, a)
	client = dial(t, a.Addr+","+b.Addr, WithFailover(time.Minute, 10*time.Millisecond))
	return a, b, client
}

// uploaded packs and uploads a small context.
func uploaded(t *testing.T, client *Client, files map[string]string) *Context {
	t.Helper()
	dir := t.TempDir()
	writeTree(t, dir, files)
	bc := pack(t, dir, "")
	if _, err := client.UploadContext(t.Context(), bc); err != nil {
		t.Fatalf("UploadContext: %v", err)
	}
	return bc
}

// serving returns the one gateway of gws that f picks, and the others.
func serving(t *testing.T, pick func(*farmtest.Farm) bool, gws ...*farmtest.Farm) (*farmtest.Farm, []*farmtest.Farm) {
	t.Helper()
	var hit *farmtest.Farm
	var rest []*farmtest.Farm
	for _, g := range gws {
		if pick(g) {
			if hit != nil {
				t.Fatal("two gateways match")
			}
			hit = g
		} else {
			rest = append(rest, g)
		}
	}
	if hit == nil {
		t.Fatal("no gateway matches")
	}
	return hit, rest
}

// listFailsOver checks that client's ListBuilds goes on after the gateway
// of a and b that served its first call stops, on the other one.
func listFailsOver(t *testing.T, client *Client, a, b *farmtest.Farm) {
	t.Helper()
	if err := listAll(t.Context(), client); err != nil {
		t.Fatalf("List: %v", err)
	}
	first, rest := serving(t, func(f *farmtest.Farm) bool { return f.Calls() > 0 }, a, b)
	first.Stop()
	if err := listAll(t.Context(), client); err != nil {
		t.Fatalf("List after %s stopped: %v", first.Addr, err)
	}
	if rest[0].Calls() == 0 {
		t.Fatalf("%s, the other gateway, served no call", rest[0].Addr)
	}
}

// TestWatchFailsOverMidStream kills the gateway a watch is on, mid-build:
// the watch goes on on the other gateway from the sequence after the last
// event delivered, and the caller sees every event once, in order.
func TestWatchFailsOverMidStream(t *testing.T) {
	a, b, client := twoGateways(t, farmtest.WithHeldBuilds())
	bc := uploaded(t, client, map[string]string{"Dockerfile": "FROM scratch\n"})
	build, err := client.start(t.Context(), BuildRequest{Context: bc, IdempotencyKey: "watch-1"})
	if err != nil {
		t.Fatal(err)
	}
	id := build.GetId()

	events := make(chan *kilnv1.BuildEvent, 64)
	type result struct {
		b   *kilnv1.Build
		err error
	}
	done := make(chan result, 1)
	go func() {
		b, err := watchAll(t.Context(), client, id, 0, func(ev Event) { events <- ev.Proto() })
		done <- result{b, err}
	}()
	var got []*kilnv1.BuildEvent
	receive := func(upTo uint64) {
		t.Helper()
		for len(got) == 0 || got[len(got)-1].GetSequence() < upTo {
			select {
			case ev := <-events:
				got = append(got, ev)
			case r := <-done:
				t.Fatalf("watch ended early: %v, %v; events %v", r.b, r.err, got)
			}
		}
	}
	for i := range 3 {
		a.Log(id, fmt.Sprintf("step %d", i))
	}
	receive(4) // the state event and three lines

	dead, rest := serving(t, func(f *farmtest.Farm) bool { return f.Watching() == 1 }, a, b)
	dead.Stop()
	for i := 3; i < 6; i++ {
		a.Log(id, fmt.Sprintf("step %d", i))
	}
	a.Finish(id, kilnv1.BuildState_BUILD_STATE_SUCCEEDED)
	r := <-done
	for len(events) > 0 {
		got = append(got, <-events)
	}
	if r.err != nil || r.b.GetState() != kilnv1.BuildState_BUILD_STATE_SUCCEEDED {
		t.Fatalf("WatchBuild: %v, %v", r.b, r.err)
	}
	want := a.Events(id)
	if len(got) != len(want) || len(want) != 8 {
		t.Fatalf("caller saw %d events, the log has %d (want 8): %v", len(got), len(want), got)
	}
	for i := range want {
		if got[i].GetSequence() != uint64(i+1) || got[i].GetLog().GetText() != want[i].GetLog().GetText() {
			t.Fatalf("event %d: %v, want %v", i, got[i], want[i])
		}
	}
	if froms := dead.WatchFroms(); !slices.Equal(froms, []uint64{1}) {
		t.Errorf("the dead gateway served watches from %v, want [1]", froms)
	}
	froms := rest[0].WatchFroms()
	if len(froms) == 0 || slices.ContainsFunc(froms, func(f uint64) bool { return f != 5 }) {
		t.Errorf("the surviving gateway served watches from %v, want only 5", froms)
	}
}

// TestStartBuildFailsOverWithIdempotencyKey: the gateway that takes
// StartBuild queues the build and dies before answering; the client
// retries on the other gateway with the same key and gets that build back.
func TestStartBuildFailsOverWithIdempotencyKey(t *testing.T) {
	a, _, client := twoGateways(t)
	bc := uploaded(t, client, map[string]string{"Dockerfile": "FROM scratch\n"})

	a.CrashNextStart()
	build, err := client.start(t.Context(), BuildRequest{Context: bc, IdempotencyKey: "ci-1"})
	if err != nil {
		t.Fatalf("StartBuild: %v", err)
	}
	builds := a.Builds()
	if len(builds) != 1 || builds[0].GetId() != build.GetId() {
		t.Fatalf("farm has builds %v, want exactly the one returned (%s)", builds, build.GetId())
	}
	if n := a.StartCalls(); n != 2 {
		t.Fatalf("%d StartBuild calls reached the farm, want 2 (one per gateway)", n)
	}
	// The surviving gateway answers the rest of the build.
	if _, err := watchAll(t.Context(), client, build.GetId(), 0, nil); err != nil {
		t.Fatalf("WatchBuild after failover: %v", err)
	}
}

// TestBuildWithFirstGatewayDown runs a whole build with one gateway of the
// list down from the start: it happens on the other, once.
func TestBuildWithFirstGatewayDown(t *testing.T) {
	for _, down := range []int{0, 1} {
		t.Run(fmt.Sprintf("gateway %d down", down), func(t *testing.T) {
			a := farmtest.Start(t)
			b := farmtest.StartReplica(t, a)
			[]*farmtest.Farm{a, b}[down].Stop()
			client := dial(t, a.Addr+","+b.Addr)
			dir := t.TempDir()
			writeTree(t, dir, map[string]string{"Dockerfile": "FROM scratch\nCOPY app /\n", "app": "x"})
			build, err := runBuild(t.Context(), client, BuildRequest{Context: pack(t, dir, "")})
			if err != nil {
				t.Fatalf("Build: %v", err)
			}
			builds := a.Builds()
			if len(builds) != 1 || builds[0].GetId() != build.GetId() || builds[0].GetIdempotencyKey() == "" {
				t.Fatalf("farm has builds %v, want the one returned, with the key Build made up", builds)
			}
		})
	}
}

// TestEveryGatewayDown: with no gateway of the list up, calls fail with
// Unavailable and say which gateways were tried.
func TestEveryGatewayDown(t *testing.T) {
	x, y := farmtest.ClosedAddr(t), farmtest.ClosedAddr(t)
	client := dial(t, x+","+y, WithFailover(300*time.Millisecond, 50*time.Millisecond))
	names := "gateways tried: " + x + ", " + y

	_, err := client.Get(t.Context(), "b1")
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), names) {
		t.Fatalf("Get: %v, want Unavailable with %q", err, names)
	}
	dir := t.TempDir()
	writeTree(t, dir, map[string]string{"Dockerfile": "FROM scratch\n"})
	_, err = client.Build(t.Context(), BuildRequest{Context: pack(t, dir, "")})
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), names) {
		t.Fatalf("Build: %v, want Unavailable with %q", err, names)
	}
	_, err = client.watch(t.Context(), "b1", 0, false, nil)
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), names) || !strings.Contains(err.Error(), "gave up after") {
		t.Fatalf("watch: %v, want Unavailable giving up with %q", err, names)
	}
}

// TestUploadResumesOnAnotherGateway kills the gateway an upload is on
// after it stored one blob: the client uploads the blobs still missing to
// the other gateway, none twice.
func TestUploadResumesOnAnotherGateway(t *testing.T) {
	a, _, client := twoGateways(t)
	dir := t.TempDir()
	files := map[string]string{"Dockerfile": "FROM scratch\nCOPY . /\n"}
	for i := range 4 {
		files[fmt.Sprintf("f%d", i)] = string(randomBytes(t, 3*UploadChunkSize/2))
	}
	writeTree(t, dir, files)
	bc := pack(t, dir, "")
	a.CrashUploadAfter(1)
	var last ContextProgress
	stats, err := client.UploadContext(t.Context(), bc, WithUploadProgress(func(p ContextProgress) { last = p }))
	if err != nil {
		t.Fatalf("UploadContext: %v", err)
	}
	if a.Streams() != 2 {
		t.Fatalf("%d UploadBlobs streams, want 2", a.Streams())
	}
	for name, data := range files {
		d := farmtest.Digest([]byte(data))
		if n := a.Uploads(d.Hash); n != 1 {
			t.Errorf("%s uploaded %d times, want once", name, n)
		}
	}
	if stats.Blobs != 5 || last.Files != 5 || last.Bytes != last.TotalBytes || stats.UploadedBytes != last.TotalBytes {
		t.Errorf("stats %+v, last progress %+v", stats, last)
	}
	if _, err := client.start(t.Context(), BuildRequest{Context: bc, IdempotencyKey: "resumed-1"}); err != nil {
		t.Fatalf("start after the resumed upload: %v", err)
	}
}

// TestTLSVerifiesEachGatewayAsItself runs two gateways on different
// loopback IPs, each with a certificate for its own IP only: a client of
// the list verifies each against its own address, and a certificate for
// the wrong IP is refused.
func TestTLSVerifiesEachGatewayAsItself(t *testing.T) {
	ca := newTestCA(t)
	tlsFor := func(certIP string) farmtest.Option {
		return farmtest.WithServerOptions(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{ca.leaf(t, certIP)}})))
	}
	clientTLS := WithTLSConfig(&tls.Config{RootCAs: ca.pool, MinVersion: tls.VersionTLS12})

	t.Run("each verified as its own IP", func(t *testing.T) {
		a := farmtest.Start(t, farmtest.WithListenAddr("127.0.0.1:0"), tlsFor("127.0.0.1"))
		b := farmtest.StartReplica(t, a, farmtest.WithListenAddr("127.0.0.2:0"), tlsFor("127.0.0.2"))
		client := dial(t, a.Addr+","+b.Addr, clientTLS)
		listFailsOver(t, client, a, b)
	})
	// Each gateway holds the other's certificate: a client that verified
	// every gateway against one name would accept one of them.
	t.Run("certificates for the other IP are refused", func(t *testing.T) {
		a := farmtest.Start(t, farmtest.WithListenAddr("127.0.0.1:0"), tlsFor("127.0.0.2"))
		b := farmtest.StartReplica(t, a, farmtest.WithListenAddr("127.0.0.2:0"), tlsFor("127.0.0.1"))
		client := dial(t, a.Addr+","+b.Addr, clientTLS)
		err := listAll(t.Context(), client)
		if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "certificate is valid for") {
			t.Fatalf("ListBuilds against gateways with each other's certificates: %v, want a certificate error", err)
		}
		if a.Calls()+b.Calls() != 0 {
			t.Fatal("a gateway with the wrong certificate served a call")
		}
	})
}

// testCA is a certificate authority for the tests.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pool *x509.CertPool
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "kiln test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &testCA{cert: cert, key: key, pool: pool}
}

// leaf returns a server certificate for one IP address.
func (ca *testCA) leaf(t *testing.T, ip string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: ip},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP(ip)}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage: x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
