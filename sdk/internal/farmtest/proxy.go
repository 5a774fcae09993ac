package farmtest

import (
	"context"
	"io"
	"net"
	"sync"
	"testing"
)

// Proxy is a TCP proxy in front of a gateway, for tests of what a client
// does when the network to a real gateway fails: Cut drops every
// connection through it and refuses new ones (accepting and closing them
// at once) until Restore.
type Proxy struct {
	// Addr is the address clients dial instead of the gateway's.
	Addr string

	target string
	lis    net.Listener
	done   chan struct{}

	mu      sync.Mutex // guards the fields below
	changed chan struct{}
	conns   map[net.Conn]bool
	cut     bool
	refused int
}

// StartProxy proxies a free loopback port to target until the test ends.
func StartProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{Addr: lis.Addr().String(), target: target, lis: lis, done: make(chan struct{}),
		changed: make(chan struct{}), conns: map[net.Conn]bool{}}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		p.accept(&wg)
	}()
	t.Cleanup(func() {
		close(p.done)
		lis.Close()
		p.Cut()
		wg.Wait()
	})
	return p
}

func (p *Proxy) accept(wg *sync.WaitGroup) {
	for {
		c, err := p.lis.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.cut {
			p.refused++
			p.notifyLocked()
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.conns[c] = true
		p.mu.Unlock()
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.serve(c)
		}()
	}
}

// serve copies between c and a new connection to the target until either
// side ends or Cut closes them.
func (p *Proxy) serve(c net.Conn) {
	defer p.drop(c)
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	p.mu.Lock()
	if p.cut {
		p.mu.Unlock()
		up.Close()
		return
	}
	p.conns[up] = true
	p.mu.Unlock()
	defer p.drop(up)
	copied := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(up, c); copied <- struct{}{} }()
	go func() { _, _ = io.Copy(c, up); copied <- struct{}{} }()
	select {
	case <-copied:
	case <-p.done:
	}
}

func (p *Proxy) drop(c net.Conn) {
	c.Close()
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
}

// Cut closes every connection through the proxy and refuses new ones
// until Restore.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	for c := range p.conns {
		c.Close()
	}
	p.notifyLocked()
}

// Restore lets connections through again.
func (p *Proxy) Restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = false
	p.notifyLocked()
}

// AwaitRefused returns once the proxy has refused n connections in all,
// or ctx's error.
func (p *Proxy) AwaitRefused(ctx context.Context, n int) error {
	for {
		p.mu.Lock()
		refused, ch := p.refused, p.changed
		p.mu.Unlock()
		if refused >= n {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		}
	}
}

func (p *Proxy) notifyLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}
