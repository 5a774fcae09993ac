package engine

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/moby/buildkit/client"
)

// ParseAddress reads an engine URL as kiln-agent --engine takes it. The
// scheme "docker" or "buildkit" names the kind; the rest is a socket path
// or host:port:
//
//	docker:///var/run/docker.sock          → docker,   unix:///var/run/docker.sock
//	docker://10.0.0.5:2376                 → docker,   tcp://10.0.0.5:2376
//	buildkit:///run/buildkit/buildkitd.sock → buildkit, unix:///run/buildkit/buildkitd.sock
//	buildkit://10.0.0.6:1234               → buildkit, tcp://10.0.0.6:1234
//
// A plain "unix:///path" or "tcp://host:port" names no kind: kind is ""
// and the caller asks the engine (Probe). addr is always a unix:// or
// tcp:// address.
func ParseAddress(s string) (kind, addr string, err error) {
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok {
		return "", "", fmt.Errorf("engine address %.100q: want docker://, buildkit://, unix:///path or tcp://host:port", s)
	}
	switch scheme {
	case KindDocker, KindBuildKit:
		kind = scheme
		if strings.HasPrefix(rest, "/") {
			scheme = "unix"
		} else {
			scheme = "tcp"
		}
	case "unix", "tcp":
	default:
		return "", "", fmt.Errorf("engine address %.100q: scheme %.20q is not supported (docker, buildkit, unix or tcp)", s, scheme)
	}
	if strings.ContainsFunc(rest, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
		return "", "", fmt.Errorf("engine address %.100q holds a space or control character", s)
	}
	switch scheme {
	case "unix":
		if !strings.HasPrefix(rest, "/") || rest == "/" || strings.HasSuffix(rest, "/") {
			return "", "", fmt.Errorf("engine address %.100q: want an absolute socket path, e.g. unix:///run/buildkit/buildkitd.sock", s)
		}
	case "tcp":
		host, port, err := net.SplitHostPort(rest)
		if err != nil {
			return "", "", fmt.Errorf("engine address %.100q: want host:port after %s://: %v", s, scheme, err)
		}
		if host == "" || strings.ContainsAny(host, "/?#@[]") {
			return "", "", fmt.Errorf("engine address %.100q: %q is not a host name or IP address", s, host)
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || port != strconv.Itoa(n) {
			return "", "", fmt.Errorf("engine address %.100q: port %q is not a number from 1 to 65535", s, port)
		}
		rest = net.JoinHostPort(host, port)
	}
	return kind, scheme + "://" + rest, nil
}

// probeTimeout bounds each of Probe's questions.
const probeTimeout = 5 * time.Second

// Probe asks the engine at addr (unix:// or tcp://, without TLS) what it
// is: a Docker engine answers GET /_ping with an API version, a buildkitd
// answers BuildKit's Control.Info. An error says neither answered, and
// why. An address that names its kind (docker://, buildkit://) is not
// asked.
func Probe(ctx context.Context, addr string) (kind string, err error) {
	kind, addr, err = ParseAddress(addr)
	if err != nil || kind != "" {
		return kind, err
	}
	dockerErr := pingDocker(ctx, addr)
	if dockerErr == nil {
		return KindDocker, nil
	}
	if ctx.Err() != nil {
		return "", ctx.Err()
	}
	bkErr := pingBuildKit(ctx, addr)
	if bkErr == nil {
		return KindBuildKit, nil
	}
	return "", fmt.Errorf("engine %s: neither a Docker engine (%v) nor a buildkitd (%v) answers", addr, dockerErr, bkErr)
}

// pingDocker asks GET /_ping over plain HTTP.
func pingDocker(ctx context.Context, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	scheme, rest, _ := strings.Cut(addr, "://")
	tr := &http.Transport{DisableKeepAlives: true}
	url := "http://" + rest + "/_ping"
	if scheme == "unix" {
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", rest)
		}
		url = "http://docker/_ping"
	}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Api-Version") == "" {
		return fmt.Errorf("GET /_ping: %s without an API version", resp.Status)
	}
	return nil
}

// pingBuildKit asks Control.Info.
func pingBuildKit(ctx context.Context, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	c, err := client.New(ctx, addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.Info(ctx); err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("no answer in %s", probeTimeout)
		}
		return err
	}
	return nil
}
