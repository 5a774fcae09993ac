package tenants

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"runtime"
	"sync"
)

// Set is one parsed, validated tenants file: it authenticates tokens. It
// is immutable but for its cache of verified tokens; a reload makes a new
// Set, which drops the cache.
type Set struct {
	tenants []*Tenant
	byName  map[string]*Tenant
	creds   []credential

	// verifying bounds concurrent argon2id verifications (each ~20 ms of
	// CPU and 19 MiB), so unauthenticated callers cannot take the machine.
	verifying chan struct{}

	mu       sync.Mutex
	verified map[tokenKey]int // token SHA-256 → index in creds; guarded by mu
}

// credential is one token hash and its tenant.
type credential struct {
	hash   tokenHash
	tenant *Tenant
	id     string
}

// maxVerified bounds the verified-token cache; when full it starts over.
const maxVerified = 4096

// Identity is an authenticated caller.
type Identity struct {
	// Tenant is the caller's tenant.
	Tenant *Tenant
	// Credential names the token hash the caller's token matched (the
	// SHA-256 of the stored hash, hex): the same token keeps it across
	// reloads, and it is safe to log. Empty in local mode.
	Credential string
}

// ErrUnknownToken is returned for a token that matches no tenant.
var ErrUnknownToken = errors.New("token matches no tenant of this farm (revoked, mistyped, or for another farm)")

func newSet(f File, lines []int) (*Set, error) {
	s := &Set{byName: map[string]*Tenant{}, verified: map[tokenKey]int{}, verifying: make(chan struct{}, max(2, runtime.GOMAXPROCS(0)))}
	if len(f.Tenants) == 0 {
		return nil, errors.New("no tenants: list at least one under tenants:")
	}
	seen := map[string]bool{}
	for i := range f.Tenants {
		t := &f.Tenants[i]
		hashes, err := validate(t)
		if err == nil && s.byName[t.Name] != nil {
			err = fmt.Errorf("tenant %q is listed twice", t.Name)
		}
		if err != nil {
			if i < len(lines) && lines[i] > 0 {
				return nil, fmt.Errorf("line %d: %w", lines[i], err)
			}
			return nil, err
		}
		for j, h := range hashes {
			if seen[h.phc] {
				return nil, fmt.Errorf("line %d: tenant %q token %d: the same hash is listed twice", lines[i], t.Name, j+1)
			}
			seen[h.phc] = true
			sum := sha256.Sum256([]byte(h.phc))
			s.creds = append(s.creds, credential{hash: h, tenant: t, id: hex.EncodeToString(sum[:])})
		}
		s.tenants = append(s.tenants, t)
		s.byName[t.Name] = t
	}
	return s, nil
}

// Len returns the number of tenants.
func (s *Set) Len() int { return len(s.tenants) }

// Tenants returns the tenants in file order.
func (s *Set) Tenants() []*Tenant { return s.tenants }

// Lookup returns the tenant called name, or nil.
func (s *Set) Lookup(name string) *Tenant { return s.byName[name] }

// HasCredential reports whether the tenant still holds the credential
// (see Identity.Credential): false once its token is removed.
func (s *Set) HasCredential(tenant, credential string) bool {
	for _, c := range s.creds {
		if c.id == credential && c.tenant.Name == tenant {
			return true
		}
	}
	return false
}

// Authenticate returns the identity token belongs to, or ErrUnknownToken.
// A token verified before is found by its SHA-256 without argon2id; an
// unknown one is tried against every hash (constant-time comparisons).
func (s *Set) Authenticate(token string) (Identity, error) {
	key := keyOf(token)
	s.mu.Lock()
	i, ok := s.verified[key]
	s.mu.Unlock()
	if ok {
		c := s.creds[i]
		return Identity{Tenant: c.tenant, Credential: c.id}, nil
	}
	s.verifying <- struct{}{}
	defer func() { <-s.verifying }()
	found := -1
	for i, c := range s.creds {
		// Try every hash, found or not, so the time taken says nothing of
		// which tenant a token is for.
		if c.hash.verify(token) && found < 0 {
			found = i
		}
	}
	if found < 0 {
		return Identity{}, ErrUnknownToken
	}
	s.mu.Lock()
	if len(s.verified) >= maxVerified {
		clear(s.verified)
	}
	s.verified[key] = found
	s.mu.Unlock()
	c := s.creds[found]
	return Identity{Tenant: c.tenant, Credential: c.id}, nil
}
