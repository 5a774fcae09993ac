package tenants

import (
	"testing"
)

// FuzzParse feeds arbitrary tenants files to the parser: it must return a
// Set or an error, never panic, and never accept a tenant it cannot
// authenticate with.
func FuzzParse(f *testing.F) {
	f.Add([]byte("tenants:\n  - name: a\n    tokens: ['$2b$04$abcdefghijklmnopqrstuu5BeGE4H2lk4mS3O6RZxW/cq6q/CN8Me']\n"))
	f.Add([]byte("tenants:\n  - name: a\n    tokens: ['$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA']\n    push: ['r.io/a/*']\n    weight: 2\n"))
	f.Add([]byte("tenants: [{name: x, tokens: [a], policy: {allow_remote_add: true}}]"))
	f.Add([]byte("- a\n- b\n"))
	f.Add([]byte("tenants:\n  - &a {name: a}\n  - *a\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Parse(data)
		if err != nil {
			return
		}
		for _, tn := range s.Tenants() {
			if !ValidName(tn.Name) || len(tn.TokenHashes) == 0 {
				t.Fatalf("accepted invalid tenant %+v", tn)
			}
		}
	})
}

// FuzzParseHash feeds arbitrary strings to the token-hash parser: whatever
// it accepts must have bounded parameters.
func FuzzParseHash(f *testing.F) {
	f.Add("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0c2FsdA$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g")
	f.Add("$2b$04$abcdefghijklmnopqrstuu5BeGE4H2lk4mS3O6RZxW/cq6q/CN8Me")
	f.Add("$argon2id$v=19$m=0,t=0,p=0$$")
	f.Add("kiln_plaintext")
	f.Fuzz(func(t *testing.T, s string) {
		h, err := ParseHash(s)
		if err != nil {
			return
		}
		if !h.bcrypt && (h.memory > maxArgonMemoryKiB || h.time > maxArgonTime || h.threads == 0 || h.threads > maxArgonThreads ||
			len(h.key) < minArgonKeyLen || len(h.salt) < minArgonSaltLen) {
			t.Fatalf("accepted unbounded hash %q", s)
		}
	})
}
