package engine

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/docker/docker/pkg/jsonmessage"
)

// parse runs a parser over a raw Engine API stream and returns what it
// reported, one string per event.
func parse(t testing.TB, stream string) (*streamParser, []string) {
	t.Helper()
	p := &streamParser{}
	var got []string
	err := decodeMessages(strings.NewReader(stream), func(m *jsonmessage.JSONMessage) error {
		got = append(got, render(p.feed(m))...)
		return nil
	})
	if err != nil {
		t.Fatalf("decoding the stream: %v", err)
	}
	got = append(got, render(p.finish())...)
	return p, got
}

func render(events []event) []string {
	var out []string
	for _, e := range events {
		switch e.kind {
		case eventLog:
			out = append(out, fmt.Sprintf("log %d %s", e.step, e.line))
		case eventStepStarted:
			out = append(out, fmt.Sprintf("start %d/%d %s", e.step, e.total, e.instruction))
		case eventStepFinished:
			cached := ""
			if e.cached {
				cached = " cached"
			}
			out = append(out, fmt.Sprintf("finish %d%s %s", e.step, cached, e.instruction))
		}
	}
	return out
}

func TestStreamParser(t *testing.T) {
	tests := []struct {
		name    string
		stream  string
		want    []string
		steps   int
		cached  int
		imageID string
		failure *BuildError
	}{
		{
			name: "multi-stage first build",
			// Recorded from Docker 20.10 with --target app; ARG META before
			// the first FROM is a step but belongs to no stage.
			stream: `{"stream":"Step 1/6 : ARG META=m"}
{"stream":"\n"}
{"stream":"Step 2/6 : FROM kiln-explore/bb:1 AS base"}
{"stream":"\n"}
{"stream":" ---\u003e 513084ac6185\n"}
{"stream":"Step 3/6 : ARG GREETING"}
{"stream":"\n"}
{"stream":" ---\u003e Running in bb2362b7d37b\n"}
{"stream":"Removing intermediate container bb2362b7d37b\n"}
{"stream":" ---\u003e 962746a50706\n"}
{"stream":"Step 4/6 : RUN echo \"g=$GREETING\"; printf 'partial'; echo; echo line2"}
{"stream":"\n"}
{"stream":" ---\u003e Running in 2b6b59dc3098\n"}
{"stream":"g=hi\n"}
{"stream":"partial\nline2\n"}
{"stream":"Removing intermediate container 2b6b59dc3098\n"}
{"stream":" ---\u003e 243b4e97f002\n"}
{"aux":{"ID":"sha256:243b4e97f0022a385a8658eec750214fb946b3063c5aef0dba664f9128c801b6"}}
{"stream":"Step 5/6 : FROM base AS app"}
{"stream":"\n"}
{"stream":" ---\u003e 243b4e97f002\n"}
{"stream":"Step 6/6 : RUN echo app"}
{"stream":"\n"}
{"stream":" ---\u003e Running in e4d912ea2c61\n"}
{"stream":"app\n"}
{"stream":"Removing intermediate container e4d912ea2c61\n"}
{"stream":" ---\u003e bc014d2696c8\n"}
{"aux":{"ID":"sha256:bc014d2696c8c8c0df8e1275ebd2e42aa3fcc02a2602e0c419e4d572adf6f86c"}}
{"stream":"Successfully built bc014d2696c8\n"}
{"stream":"Successfully tagged kiln-explore/app:1\n"}
`,
			want: []string{
				"start 1/6 ARG META=m",
				"log 1 Step 1/6 : ARG META=m",
				"finish 1 ARG META=m",
				"start 2/6 FROM kiln-explore/bb:1 AS base",
				"log 2 Step 2/6 : FROM kiln-explore/bb:1 AS base",
				"finish 2 FROM kiln-explore/bb:1 AS base",
				"start 3/6 ARG GREETING",
				"log 3 Step 3/6 : ARG GREETING",
				"finish 3 ARG GREETING",
				`start 4/6 RUN echo "g=$GREETING"; printf 'partial'; echo; echo line2`,
				`log 4 Step 4/6 : RUN echo "g=$GREETING"; printf 'partial'; echo; echo line2`,
				"log 4 g=hi",
				"log 4 partial",
				"log 4 line2",
				`finish 4 RUN echo "g=$GREETING"; printf 'partial'; echo; echo line2`,
				"start 5/6 FROM base AS app",
				"log 5 Step 5/6 : FROM base AS app",
				"finish 5 FROM base AS app",
				"start 6/6 RUN echo app",
				"log 6 Step 6/6 : RUN echo app",
				"log 6 app",
				"log 6 Successfully built bc014d2696c8",
				"log 6 Successfully tagged kiln-explore/app:1",
				"finish 6 RUN echo app",
			},
			steps:   3,
			imageID: "sha256:bc014d2696c8c8c0df8e1275ebd2e42aa3fcc02a2602e0c419e4d572adf6f86c",
		},
		{
			name: "cached steps",
			stream: `{"stream":"Step 1/3 : FROM base"}{"stream":"\n"}{"stream":" ---\u003e 513084ac6185\n"}
{"stream":"Step 2/3 : ARG GREETING"}{"stream":"\n"}{"stream":" ---\u003e Using cache\n"}{"stream":" ---\u003e 962746a50706\n"}
{"stream":"Step 3/3 : RUN echo hi"}{"stream":"\n"}{"stream":" ---\u003e Using cache\n"}{"stream":" ---\u003e 243b4e97f002\n"}
{"aux":{"ID":"sha256:243b4e97f0022a385a8658eec750214fb946b3063c5aef0dba664f9128c801b6"}}
{"stream":"Successfully built 243b4e97f002\n"}`,
			want: []string{
				"start 1/3 FROM base", "log 1 Step 1/3 : FROM base", "finish 1 FROM base",
				"start 2/3 ARG GREETING", "log 2 Step 2/3 : ARG GREETING", "finish 2 cached ARG GREETING",
				"start 3/3 RUN echo hi", "log 3 Step 3/3 : RUN echo hi",
				"log 3 Successfully built 243b4e97f002",
				"finish 3 cached RUN echo hi",
			},
			steps:   2,
			cached:  2,
			imageID: "sha256:243b4e97f0022a385a8658eec750214fb946b3063c5aef0dba664f9128c801b6",
		},
		{
			name: "failing step ends with the command's output",
			// Recorded: output without a trailing newline, then removal, then the error.
			stream: `{"stream":"Step 1/2 : FROM base"}{"stream":"\n"}{"stream":" ---\u003e 513084ac6185\n"}
{"stream":"Step 2/2 : RUN printf nonl2; exit 4"}{"stream":"\n"}{"stream":" ---\u003e Running in a5e89853e92d\n"}
{"stream":"nonl2"}
{"stream":"Removing intermediate container a5e89853e92d\n"}
{"errorDetail":{"code":4,"message":"The command '/bin/sh -c printf nonl2; exit 4' returned a non-zero code: 4"},"error":"The command '/bin/sh -c printf nonl2; exit 4' returned a non-zero code: 4"}`,
			want: []string{
				"start 1/2 FROM base", "log 1 Step 1/2 : FROM base", "finish 1 FROM base",
				"start 2/2 RUN printf nonl2; exit 4", "log 2 Step 2/2 : RUN printf nonl2; exit 4",
				"log 2 nonl2",
			},
			steps: 1,
			failure: &BuildError{Step: 2, Instruction: "RUN printf nonl2; exit 4",
				Message: "The command '/bin/sh -c printf nonl2; exit 4' returned a non-zero code: 4"},
		},
		{
			name:    "error before any step",
			stream:  `{"errorDetail":{"message":"manifest unknown"},"error":"manifest unknown"}{"stream":"Step 1/1 : FROM x\n"}`,
			failure: &BuildError{Message: "manifest unknown"},
		},
		{
			name:    "legacy error field only",
			stream:  `{"stream":"Step 1/1 : FROM x\n"}{"error":"pull access denied"}`,
			want:    []string{"start 1/1 FROM x", "log 1 Step 1/1 : FROM x"},
			failure: &BuildError{Step: 1, Instruction: "FROM x", Message: "pull access denied"},
		},
		{
			name: "output that imitates the engine is output",
			stream: `{"stream":"Step 1/3 : FROM base\n ---\u003e 513084ac6185\nStep 2/3 : RUN ./fake.sh\n ---\u003e Running in 0123456789ab\n"}
{"stream":"Step 3/3 : RUN nothing\n ---\u003e Using cache\n ---\u003e 243b4e97f002\n ---\u003e Running in ffffffffffff\nRemoving intermediate container ffffffffffff\n"}
{"stream":"Removing intermediate container 0123456789ab\n ---\u003e 243b4e97f002\n"}`,
			want: []string{
				"start 1/3 FROM base", "log 1 Step 1/3 : FROM base", "finish 1 FROM base",
				"start 2/3 RUN ./fake.sh", "log 2 Step 2/3 : RUN ./fake.sh",
				"log 2 Step 3/3 : RUN nothing",
				"log 2  ---> Using cache",
				"log 2  ---> 243b4e97f002",
				"log 2  ---> Running in ffffffffffff",
				"log 2 Removing intermediate container ffffffffffff",
				"finish 2 RUN ./fake.sh",
			},
			steps: 1,
		},
		{
			name:   "steps out of order are not steps",
			stream: `{"stream":"Step 1/2 : FROM base\n"}{"stream":"Step 3/2 : RUN a\n"}{"stream":"Step 2/9 : RUN b\n"}{"stream":"Step 2/2 : RUN c\n"}`,
			want: []string{
				"start 1/2 FROM base", "log 1 Step 1/2 : FROM base",
				"log 1 Step 3/2 : RUN a", "log 1 Step 2/9 : RUN b",
				"finish 1 FROM base",
				"start 2/2 RUN c", "log 2 Step 2/2 : RUN c", "finish 2 RUN c",
			},
			steps: 1,
		},
		{
			name: "ONBUILD triggers run several containers in one step",
			stream: `{"stream":"Step 1/1 : FROM parent\n"}{"stream":"# Executing 2 build triggers\n"}
{"stream":" ---\u003e Running in aaaaaaaaaaaa\n"}{"stream":"one\n"}{"stream":"Removing intermediate container aaaaaaaaaaaa\n"}
{"stream":" ---\u003e Running in bbbbbbbbbbbb\n"}{"stream":"two\n"}{"stream":"Removing intermediate container bbbbbbbbbbbb\n"}
{"stream":" ---\u003e 243b4e97f002\n"}`,
			want: []string{
				"start 1/1 FROM parent", "log 1 Step 1/1 : FROM parent",
				"log 1 # Executing 2 build triggers", "log 1 one", "log 1 two",
				"finish 1 FROM parent",
			},
		},
		{
			name:   "carriage returns and blank output lines",
			stream: `{"stream":"Step 1/2 : FROM base\n"}{"stream":"Step 2/2 : RUN x\n ---\u003e Running in 0123456789ab\n"}{"stream":"a\r\n\r\nb\rc\n"}`,
			want: []string{
				"start 1/2 FROM base", "log 1 Step 1/2 : FROM base", "finish 1 FROM base",
				"start 2/2 RUN x", "log 2 Step 2/2 : RUN x",
				"log 2 a", "log 2 ", "log 2 b\rc",
				"finish 2 RUN x",
			},
			steps: 1,
		},
		{
			name: "pull status lines, progress bars dropped",
			stream: `{"stream":"Step 1/1 : FROM 127.0.0.1:5000/kiln-test/busybox:1\n"}
{"status":"Pulling from kiln-test/busybox","id":"1"}
{"status":"Pulling fs layer","progressDetail":{},"id":"6a2ba8ec4a1e"}
{"status":"Downloading","progressDetail":{"current":1024,"total":2048},"progress":"[==\u003e ]","id":"6a2ba8ec4a1e"}
{"status":"Pull complete","progressDetail":{},"id":"6a2ba8ec4a1e"}
{"status":"Digest: sha256:0123"}
{"status":"Status: Downloaded newer image for 127.0.0.1:5000/kiln-test/busybox:1"}`,
			want: []string{
				"start 1/1 FROM 127.0.0.1:5000/kiln-test/busybox:1", "log 1 Step 1/1 : FROM 127.0.0.1:5000/kiln-test/busybox:1",
				"log 1 1: Pulling from kiln-test/busybox",
				"log 1 6a2ba8ec4a1e: Pulling fs layer",
				"log 1 6a2ba8ec4a1e: Pull complete",
				"log 1 Digest: sha256:0123",
				"log 1 Status: Downloaded newer image for 127.0.0.1:5000/kiln-test/busybox:1",
				"finish 1 FROM 127.0.0.1:5000/kiln-test/busybox:1",
			},
		},
		{
			name:    "aux that is not an image ID is ignored",
			stream:  `{"aux":{"ID":"sha256:aa"}}{"aux":"x"}{"aux":{"ID":"nonsense"}}{"aux":{"Tag":"1"}}`,
			imageID: "sha256:aa",
		},
		{
			name:   "unterminated last line is flushed",
			stream: `{"stream":"Step 1/1 : FROM base\n"}{"stream":"Successfully"}{"stream":" built"}`,
			want: []string{
				"start 1/1 FROM base", "log 1 Step 1/1 : FROM base",
				"log 1 Successfully built",
				"finish 1 FROM base",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, got := parse(t, tt.stream)
			if !slices.Equal(got, tt.want) {
				t.Errorf("events:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(tt.want, "\n"))
			}
			if p.steps != tt.steps || p.cachedSteps != tt.cached {
				t.Errorf("steps %d cached %d, want %d cached %d", p.steps, p.cachedSteps, tt.steps, tt.cached)
			}
			if p.imageID != tt.imageID {
				t.Errorf("imageID %q, want %q", p.imageID, tt.imageID)
			}
			switch {
			case tt.failure == nil && p.failure != nil:
				t.Errorf("failure %+v, want none", *p.failure)
			case tt.failure != nil && (p.failure == nil || *p.failure != *tt.failure):
				t.Errorf("failure %+v, want %+v", p.failure, *tt.failure)
			}
		})
	}
}

func TestStreamParserCutsLongLines(t *testing.T) {
	p := &streamParser{}
	long := strings.Repeat("é", maxLineBytes) // two bytes a rune: cuts fall mid-rune
	var lines []string
	for _, chunk := range []string{"Step 1/2 : FROM base\nStep 2/2 : RUN x\n ---> Running in 0123456789ab\n", long[:1000], long[1000:], "\n"} {
		for _, e := range p.feed(&jsonmessage.JSONMessage{Stream: chunk}) {
			if e.kind == eventLog && e.step == 2 && !strings.HasPrefix(e.line, "Step") {
				lines = append(lines, e.line)
			}
		}
	}
	if len(p.partial) > maxLineBytes {
		t.Fatalf("buffered %d bytes, want at most %d", len(p.partial), maxLineBytes)
	}
	if got := strings.Join(lines, ""); got != long {
		t.Fatalf("lines do not add up to the output: %d bytes in %d lines, want %d", len(got), len(lines), len(long))
	}
	for _, l := range lines {
		if len(l) > maxLineBytes || !utf8.ValidString(l) {
			t.Fatalf("line of %d bytes, valid UTF-8 %v", len(l), utf8.ValidString(l))
		}
	}
}

// FuzzStreamParser feeds arbitrary bytes, both as a JSON message stream and
// as raw stream text cut into messages at NUL bytes, and checks the
// invariants Build relies on.
func FuzzStreamParser(f *testing.F) {
	f.Add([]byte(`{"stream":"Step 1/2 : FROM base\n"}{"stream":"Step 2/2 : RUN x\n ---> Running in 0123456789ab\nout"}{"stream":"Removing intermediate container 0123456789ab\n"}{"aux":{"ID":"sha256:aa"}}`))
	f.Add([]byte(`{"stream":"Step 1/2 : FROM base\nStep 2/2 : RUN x\n ---> Using cache\n"}{"error":"boom"}`))
	f.Add([]byte("Step 1/3 : ARG A\n\x00Step 2/3 : FROM b\n\x00Step 3/3 : COPY . .\n ---> Using cache\n\x00 ---> Using cache\n"))
	f.Add([]byte("Step 1/2 : FROM b\nStep 2/2 : RUN y\n ---> Running in abc\n\x00par\x00tial\r\nRemoving intermediate container abc\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var asJSON streamParser
		var events []event
		_ = decodeMessages(bytes.NewReader(data), func(m *jsonmessage.JSONMessage) error {
			events = append(events, asJSON.feed(m)...)
			return nil
		})
		events = append(events, asJSON.finish()...)
		checkInvariants(t, &asJSON, events)

		var asText streamParser
		events = events[:0]
		for chunk := range bytes.SplitSeq(data, []byte{0}) {
			events = append(events, asText.feed(&jsonmessage.JSONMessage{Stream: string(chunk)})...)
		}
		events = append(events, asText.finish()...)
		checkInvariants(t, &asText, events)
	})
}

func checkInvariants(t *testing.T, p *streamParser, events []event) {
	t.Helper()
	if p.cachedSteps > p.steps || p.steps > p.step || p.step > p.total {
		t.Fatalf("cached %d, steps %d, step %d, total %d", p.cachedSteps, p.steps, p.step, p.total)
	}
	step, total, finished := 0, 0, true
	for _, e := range events {
		switch e.kind {
		case eventStepStarted:
			if e.step != step+1 || !finished || (total != 0 && e.total != total) || e.step > e.total {
				t.Fatalf("step %d/%d started after step %d/%d (finished %v)", e.step, e.total, step, total, finished)
			}
			step, total, finished = e.step, e.total, false
		case eventStepFinished:
			if e.step != step || finished {
				t.Fatalf("step %d finished while at step %d (finished %v)", e.step, step, finished)
			}
			finished = true
		case eventLog:
			if e.step != step {
				t.Fatalf("log line for step %d at step %d", e.step, step)
			}
			if strings.Contains(e.line, "\n") || len(e.line) > maxLineBytes {
				t.Fatalf("log line of %d bytes with a newline: %q", len(e.line), e.line)
			}
		default:
			t.Fatalf("event of kind %d", e.kind)
		}
	}
	if p.failure != nil && finished && step > 0 && p.failure.Step == step {
		t.Fatalf("failed step %d was reported finished", step)
	}
	if p.failure == nil && !finished {
		t.Fatalf("step %d never finished", step)
	}
}
