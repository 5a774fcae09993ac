package policy

import (
	"bytes"

	"context"
	"errors"
	"fmt"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/tonistiigi/go-csvvalue"
	"net"
	"net/netip"
	"strings"
	"testing"
)

// fixedResolver answers from a table; other names do not resolve.
type fixedResolver map[string][]string

func (r fixedResolver) LookupIP(_ context.Context, _, host string) ([]net.IP, error) {
	addrs, ok := r[host]
	if !ok {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	var out []net.IP
	for _, a := range addrs {
		out = append(out, net.ParseIP(a))
	}
	return out, nil
}

func testChecker() *Checker {
	return &Checker{
		Resolver: fixedResolver{
			"example.com":     {"93.184.215.14"},
			"rebind.test":     {"93.184.215.15", "127.0.0.1"},
			"metadata.test":   {"169.254.169.254"},
			"github.com":      {"140.82.121.3"},
			"agent-host.test": {"10.1.2.3"},
		},
		HostAddrs: func() ([]netip.Addr, error) {
			return []netip.Addr{netip.MustParseAddr("10.1.2.3"), netip.MustParseAddr("172.17.0.1")}, nil
		},
	}
}

func TestCheckRefuses(t *testing.T) {
	open := Policy{Tenant: "team-a", AllowRemoteAdd: true, AllowNetworkHost: true, AllowInsecure: true, Frontends: []string{"docker/dockerfile:1*"}}
	closed := Policy{Tenant: "team-a"}
	for _, tt := range []struct {
		name       string
		dockerfile string
		args       map[string]string
		p          Policy
		want       string // "" means allowed
	}{
		{"plain", "FROM x\nRUN echo hi\n", nil, closed, ""},
		{"syntax refused", "# syntax=evil/fe:1\nFROM x\n", nil, closed, `# syntax=evil/fe:1: refused by policy: the engine would pull and run the Dockerfile frontend image "evil/fe:1", which tenant "team-a" may not use`},
		{"syntax extra words", "# syntax=evil/fe:1 docker/dockerfile:1\nFROM x\n", nil, open, `# syntax=evil/fe:1: refused by policy`},
		{"syntax allowed", "# syntax=docker/dockerfile:1.7 extra\nFROM x\n", nil, open, ""},
		{"syntax after unknown directive (old parser)", "# foo=bar\n# syntax=evil/fe\nFROM x\n", nil, open, "evil/fe"},
		{"syntax after BOM", "\xEF\xBB\xBF# syntax=evil/fe\nFROM x\n", nil, open, "evil/fe"},
		{"syntax c-style", "// syntax=evil/fe\nFROM x\n", nil, open, "evil/fe"},
		{"BUILDKIT_SYNTAX", "FROM x\n", map[string]string{"BUILDKIT_SYNTAX": " evil/fe more"}, open, "build arg BUILDKIT_SYNTAX= evil/fe more: refused by policy"},
		{"cache namespace arg", "FROM x\n", map[string]string{"BUILDKIT_CACHE_MOUNT_NS": "kiln/team-b"}, open, "BUILDKIT_CACHE_MOUNT_NS: refused by policy"},
		{"add loopback", "FROM x\nADD http://127.0.0.1:9000/x /x\n", nil, open, "ADD http://127.0.0.1:9000/x: refused by policy: loopback address (Dockerfile line 2)"},
		{"add json form", "FROM x\nADD [\"http://[::1]:80/x\", \"/x\"]\n", nil, open, "ADD http://[::1]:80/x: refused by policy: loopback address"},
		{"add upper-case scheme", "FROM x\nADD HTTP://127.0.0.1/x /x\n", nil, open, "loopback address"},
		{"add credentials in url", "FROM x\nADD http://user:pw@169.254.169.254/ /x\n", nil, open, "cloud metadata endpoint"},
		{"add localhost", "FROM x\nADD http://LOCALHOST./x /x\n", nil, open, "loopback address"},
		{"add metadata", "FROM x\nADD http://169.254.169.254/latest/meta-data/ /m\n", nil, open, "cloud metadata endpoint"},
		{"add metadata name", "FROM x\nADD http://metadata.google.internal/computeMetadata/v1/ /m\n", nil, open, "cloud metadata endpoint"},
		{"add link-local v6", "FROM x\nADD http://[fe80::1%25eth0]/ /m\n", nil, open, "link-local address"},
		{"add mapped v6 loopback", "FROM x\nADD http://[::ffff:127.0.0.1]/ /m\n", nil, open, "loopback address"},
		{"add unspecified", "FROM x\nADD http://0.0.0.0:8080/ /m\n", nil, open, "unspecified address"},
		{"add decimal ip", "FROM x\nADD http://2130706433/ /m\n", nil, open, "numeric host in a non-standard form"},
		{"add own address", "FROM x\nADD http://172.17.0.1:5000/v2/_catalog /m\n", nil, open, "an address of the agent's host"},
		{"add name resolving to loopback", "FROM x\nADD https://rebind.test/x /m\n", nil, open, "loopback address (rebind.test resolves to 127.0.0.1)"},
		{"add unresolvable", "FROM x\nADD https://nowhere.test/x /m\n", nil, open, "does not resolve"},
		{"add allowed", "FROM x\nADD https://example.com/x.tgz /m\n", nil, open, ""},
		{"add remote not allowed", "FROM x\nADD https://example.com/x.tgz /m\n", nil, closed, `ADD https://example.com/x.tgz: refused by policy (tenant "team-a" does not allow ADD of URLs or git repositories)`},
		{"add loopback, remote not allowed", "FROM x\nADD http://127.0.0.1:9000/x /x\n", nil, closed, "ADD http://127.0.0.1:9000/x: refused by policy: loopback address"},
		{"add metadata, remote not allowed", "FROM x\nADD http://169.254.169.254/ /x\n", nil, closed, "cloud metadata endpoint"},
		{"add git", "FROM x\nADD git@github.com:moby/buildkit.git /src\n", nil, closed, "does not allow ADD of URLs"},
		{"add local", "FROM x\nADD ./files /files\nADD --chown=1 a.tar b.tar /\n", nil, closed, ""},
		{"add via arg default", "ARG U=http://127.0.0.1/x\nFROM x\nARG U\nADD $U /x\n", nil, open, "ADD $U (http://127.0.0.1/x): refused by policy: loopback address"},
		{"add via build arg", "FROM x\nARG U=https://example.com/\nADD ${U} /x\n", map[string]string{"U": "http://169.254.169.254/"}, open, "cloud metadata endpoint"},
		{"add via env", "FROM x\nENV H=127.0.0.1\nADD http://$H/x /x\n", nil, open, "loopback address"},
		{"add unexpandable", "FROM x\nADD $NOWHERE /x\n", nil, open, "cannot tell what it expands to"},
		{"add unexpandable host", "FROM x\nADD http://${H}/x /x\n", nil, open, "cannot tell what it expands to"},
		{"add unexpandable local", "FROM x\nADD ./dir/$NAME /x\n", nil, closed, ""},
		{"add in later stage", "FROM x AS a\nRUN true\nFROM y\nADD http://127.0.0.1/ /\n", nil, open, "loopback"},
		{"onbuild add", "FROM x\nONBUILD ADD http://169.254.169.254/ /m\n", nil, open, "cloud metadata endpoint"},
		{"network host", "FROM x\nRUN --network=host wget http://127.0.0.1/\n", nil, closed, `RUN --network=host: refused by policy (tenant "team-a" does not allow host networking) (Dockerfile line 2)`},
		{"network host quoted", "FROM x\nRUN --network=\"HOST\" true\n", nil, closed, "does not allow host networking"},
		{"network host continued", "FROM x\nRUN --mount=type=cache,target=/c \\\n  --network=host true\n", nil, closed, "does not allow host networking"},
		{"network variable", "FROM x\nRUN --network=$N true\n", nil, closed, "does not allow host networking"},
		{"network host allowed", "FROM x\nRUN --network=host true\n", nil, open, ""},
		{"network none", "FROM x\nRUN --network=none true\n", nil, closed, ""},
		{"onbuild network host", "FROM x\nONBUILD RUN --network=host true\n", nil, closed, "does not allow host networking"},
		{"insecure", "FROM x\nRUN --security=insecure true\n", nil, closed, `RUN --security=insecure: refused by policy (tenant "team-a" does not allow insecure builds)`},
		{"insecure allowed", "FROM x\nRUN --security=insecure true\n", nil, open, ""},
		{"mount type variable", "FROM x\nRUN --mount=type=$T,target=/c true\n", nil, open, "mount type \"$T\" is a variable"},
		{"classic: syntax ignored", "# syntax=evil/fe\nFROM x\nRUN echo\n", map[string]string{"BUILDKIT_SYNTAX": "evil/fe"}, Policy{Tenant: "team-a", Classic: true}, ""},
		{"classic: add loopback", "# syntax=evil/fe\nFROM x\nADD http://127.0.0.1/ /\n", nil, Policy{Tenant: "team-a", Classic: true}, "loopback address"},
		{"onbuild cache", "FROM x\nONBUILD RUN --mount=type=cache,target=/c true\n", nil, open, "ONBUILD trigger"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := testChecker().Check(context.Background(), []byte(tt.dockerfile), tt.args, tt.p)
			var r *Refusal
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("err = %v, want one saying %q", err, tt.want)
			case tt.want != "" && !errors.As(err, &r):
				t.Fatalf("err %v is not a *Refusal", err)
			}
		})
	}
}

func TestCheckNamespacesCacheMounts(t *testing.T) {
	p := Policy{Tenant: "team-a"}
	for _, tt := range []struct {
		name, in, want string
	}{
		{"id", "FROM x\nRUN --mount=type=cache,id=go,target=/go true\n",
			"FROM x\nRUN --mount=type=cache,id=kiln/team-a/go,target=/go true\n"},
		{"no id: the target", "FROM x\nRUN --mount=type=cache,target=/root/.cache make\n",
			"FROM x\nRUN --mount=type=cache,target=/root/.cache,id=kiln/team-a/root/.cache make\n"},
		{"upper-case key, other mounts", "FROM x\nRUN --mount=type=secret,id=tok --mount=TYPE=cache,ID=x,dst=/x --network=none cat /x\n",
			"FROM x\nRUN --mount=type=secret,id=tok --mount=TYPE=cache,ID=kiln/team-a/x,dst=/x --network=none cat /x\n"},
		{"continued lines keep numbering", "FROM x\nRUN --mount=type=cache,id=a,target=/a \\\n    --mount=type=cache,id=b,target=/b \\\n    # a comment\n    make \\\n    all\nRUN echo after\n",
			"FROM x\nRUN --mount=type=cache,id=kiln/team-a/a,target=/a --mount=type=cache,id=kiln/team-a/b,target=/b make     all\n#\n#\n#\n#\nRUN echo after\n"},
		{"quoted value", "FROM x\nRUN --mount=\"type=cache,id=a b,target=/c\" true\n",
			"FROM x\nRUN --\"mount=type=cache,id=kiln/team-a/a b,target=/c\" true\n"},
		{"exec form", "FROM x\nRUN --mount=type=cache,id=a,target=/a [\"sh\", \"-c\", \"echo <hi>\"]\n",
			"FROM x\nRUN --mount=type=cache,id=kiln/team-a/a,target=/a [\"sh\",\"-c\",\"echo \\u003chi\\u003e\"]\n"},
		{"heredoc", "FROM x\nRUN --mount=type=cache,id=a,target=/a <<EOF\necho hi\nEOF\nRUN true\n",
			"FROM x\nRUN --mount=type=cache,id=kiln/team-a/a,target=/a <<EOF\necho hi\nEOF\nRUN true\n"},
		{"escape directive", "# escape=`\nFROM x\nRUN --mount=type=cache,id=a,target=/a `\n  echo hi\n",
			"# escape=`\nFROM x\nRUN --mount=type=cache,id=kiln/team-a/a,target=/a echo hi\n#\n"},
		{"crlf", "FROM x\r\nRUN --mount=type=cache,id=a,target=/a true\r\n",
			"FROM x\r\nRUN --mount=type=cache,id=kiln/team-a/a,target=/a true\r\n"},
		{"variable id", "FROM x\nARG ID\nRUN --mount=type=cache,id=$ID,target=/a true\n",
			"FROM x\nARG ID\nRUN --mount=type=cache,id=kiln/team-a/$ID,target=/a true\n"},
		{"no cache mount: unchanged", "FROM x\nRUN  --mount=type=bind,target=/a   true\n",
			"FROM x\nRUN  --mount=type=bind,target=/a   true\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := testChecker().Check(context.Background(), []byte(tt.in), nil, p)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.want {
				t.Fatalf("got\n%s\nwant\n%s", got, tt.want)
			}
			if strings.Count(string(got), "\n") != strings.Count(tt.in, "\n") {
				t.Fatal("line count changed")
			}
		})
	}
}

func TestSyntaxImages(t *testing.T) {
	for _, tt := range []struct {
		head string
		want []string
	}{
		{"# syntax=docker/dockerfile:1\nFROM x\n", []string{"docker/dockerfile:1"}},
		{"#syntax = example.com/fe:2 \nFROM x\n", []string{"example.com/fe:2"}},
		{"# SYNTAX=fe\n", []string{"fe"}},
		{"# syntax=IMAGE extra words\n", []string{"IMAGE"}},
		{"# syntax=IMAGE\textra\n", []string{"IMAGE\textra"}},
		{"# escape=`\n# syntax=fe:1\nFROM x\n", []string{"fe:1"}},
		{"# unknown=1\n# syntax=fe:1\nFROM x\n", []string{"fe:1"}}, // Docker 20.10 reads on past unknown directives
		{"#!/usr/bin/env docker\n# syntax=fe:1\n", []string{"fe:1"}},
		{"{\"syntax\": \"fe:json\"}", []string{"fe:json"}},
		{"# syntax=a\n# syntax=b\n", []string{"a", "b"}}, // the new parser refuses a second one; the old one takes the last
		{"# a comment\n# syntax=fe:1\nFROM x\n", nil},
		{"\n# syntax=fe:1\n", nil},
		{"FROM x\n# syntax=fe:1\n", nil},
		{"", nil},
		{"# syntaxes=fe\n", nil},
	} {
		got := SyntaxImages([]byte(tt.head))
		if fmt.Sprint(got) != fmt.Sprint(tt.want) {
			t.Errorf("SyntaxImages(%q) = %q, want %q", tt.head, got, tt.want)
		}
	}
}

// FuzzSyntaxImages: whatever the Dockerfile, the image the engine's
// parser would pull is among those SyntaxImages returns.
func FuzzSyntaxImages(f *testing.F) {
	for _, s := range []string{"# syntax=a b\nFROM x\n", "\xEF\xBB\xBF#syntax=x", "#!sh\n// syntax = y z\n", "{\"syntax\":\"j\"}", "# escape=`\n#syntax=q"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, df []byte) {
		got := SyntaxImages(df)
		if ref, _, _, ok := detectSyntax(df); ok {
			found := false
			for _, g := range got {
				found = found || g == ref
			}
			if !found {
				t.Fatalf("engine would pull %q; SyntaxImages = %q", ref, got)
			}
		}
		for _, g := range got {
			if strings.Contains(g, " ") {
				t.Fatalf("image %q has a space: not the first word", g)
			}
		}
	})
}

// FuzzCheck: any Dockerfile is refused or comes back with as many lines,
// and every cache mount in it (as BuildKit's parser reads the result)
// has the tenant's id prefix.
func FuzzCheck(f *testing.F) {
	for _, s := range []string{
		"FROM x\nRUN --mount=type=cache,target=/a \\\n --mount=type=cache,id=b,target=/b true\n",
		"FROM x\nRUN --mount=\"type=cache,id=a b\" <<EOF\nhi\nEOF\n",
		"# escape=`\nFROM x\nRUN --mount=type=cache,ID=q,dst=/q `\n\n  true\n",
		"FROM x\nADD http://127.0.0.1/ /\n",
	} {
		f.Add([]byte(s))
	}
	p := Policy{Tenant: "t", AllowRemoteAdd: true}
	f.Fuzz(func(t *testing.T, df []byte) {
		out, err := testChecker().Check(context.Background(), df, nil, p)
		if err != nil {
			return
		}
		if strings.Count(string(out), "\n") != strings.Count(string(df), "\n") {
			t.Fatalf("line count changed:\n%q\n%q", df, out)
		}
		res, err := parser.Parse(bytes.NewReader(out))
		if err != nil {
			t.Fatalf("rewritten Dockerfile does not parse: %v\n%q", err, out)
		}
		for _, n := range res.AST.Children {
			if !strings.EqualFold(n.Value, "run") {
				continue
			}
			for _, fl := range n.Flags {
				v, ok := strings.CutPrefix(fl, "--mount=")
				if !ok {
					continue
				}
				fields, err := csvvalue.Fields(v, nil)
				if err != nil {
					continue
				}
				typ, id := "", ""
				for _, fd := range fields {
					k, val, _ := strings.Cut(fd, "=")
					switch strings.ToLower(k) {
					case "type":
						typ = strings.ToLower(val)
					case "id":
						id = val
					}
				}
				if typ == "cache" && !strings.HasPrefix(id, p.CachePrefix()) {
					t.Fatalf("cache mount %q without the prefix in\n%q\nfrom\n%q", fl, out, df)
				}
			}
		}
	})
}
