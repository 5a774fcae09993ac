package config

import (
	"flag"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{name: "default", want: "def"},
		{name: "env", env: map[string]string{"KILN_NATS_URL": "nats://env"}, want: "nats://env"},
		{name: "flag wins over env", args: []string{"--nats-url", "nats://flag"}, env: map[string]string{"KILN_NATS_URL": "nats://env"}, want: "nats://flag"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			fs := flag.NewFlagSet("x", flag.ContinueOnError)
			url := fs.String("nats-url", "def", "")
			if err := Parse(fs, tc.args); err != nil {
				t.Fatal(err)
			}
			if *url != tc.want {
				t.Fatalf("nats-url = %q, want %q", *url, tc.want)
			}
		})
	}
}

func TestParseBadEnv(t *testing.T) {
	t.Setenv("KILN_SLOTS", "many")
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fs.Int("slots", 2, "")
	if err := Parse(fs, nil); err == nil {
		t.Fatal("KILN_SLOTS=many parsed without error")
	}
}

func TestLabels(t *testing.T) {
	l := Labels{}
	if err := l.Set("arch=amd64,gpu=none"); err != nil {
		t.Fatal(err)
	}
	if l["arch"] != "amd64" || l["gpu"] != "none" {
		t.Fatalf("labels = %v", l)
	}
	if err := l.Set("novalue"); err == nil {
		t.Fatal("label without = accepted")
	}
}
