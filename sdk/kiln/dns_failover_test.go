package kiln

import (
	"net"
	"testing"
	"time"

	"github.com/kilnbuild/kiln/sdk/internal/farmtest"
	"golang.org/x/net/dns/dnsmessage"
)

// TestDNSNameFailsOver dials a name with two A records, served by a DNS
// server of the test (dns://server/name:port): gRPC's dns resolver hands
// both addresses to the balancer, and the client fails over from the
// gateway it used to the other when that one stops.
func TestDNSNameFailsOver(t *testing.T) {
	a := farmtest.Start(t, farmtest.WithListenAddr("127.0.0.1:0"))
	_, port, _ := net.SplitHostPort(a.Addr)
	b := farmtest.StartReplica(t, a, farmtest.WithListenAddr("127.0.0.2:"+port))
	dns := serveDNS(t, "gateways.kiln.test.", net.IPv4(127, 0, 0, 1), net.IPv4(127, 0, 0, 2))

	target := "dns://" + dns + "/gateways.kiln.test:" + port
	if IsLocalAddress(target) {
		t.Fatalf("IsLocalAddress(%q): a name other than localhost is not local", target)
	}
	client := dial(t, target, WithInsecurePlaintext(), WithFailover(time.Minute, 10*time.Millisecond))
	listFailsOver(t, client, a, b)
}

// serveDNS answers A queries for name with ips, and every other query
// with no records, on a loopback UDP port until the test ends. It returns
// the server's address.
func serveDNS(t *testing.T, name string, ips ...net.IP) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() {
		pc.Close()
		<-done
	})
	go func() {
		defer close(done)
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			var req dnsmessage.Message
			if req.Unpack(buf[:n]) != nil || len(req.Questions) != 1 {
				continue
			}
			q := req.Questions[0]
			resp := dnsmessage.Message{
				Header:    dnsmessage.Header{ID: req.ID, Response: true, Authoritative: true, RecursionDesired: req.RecursionDesired},
				Questions: req.Questions,
			}
			if q.Type == dnsmessage.TypeA && q.Name.String() == name {
				for _, ip := range ips {
					resp.Answers = append(resp.Answers, dnsmessage.Resource{
						Header: dnsmessage.ResourceHeader{Name: q.Name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: 60},
						Body:   &dnsmessage.AResource{A: [4]byte(ip.To4())},
					})
				}
			}
			out, err := resp.Pack()
			if err != nil {
				continue
			}
			_, _ = pc.WriteTo(out, from)
		}
	}()
	return pc.LocalAddr().String()
}
