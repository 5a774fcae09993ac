package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"

	"github.com/docker/docker/api/types/registry"

	"github.com/kilnbuild/kiln/agent/engine"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules/seal"
)

// openSecrets opens build b's sealed secrets with the agent's key.
func (a *Agent) openSecrets(b *kilnv1.Build) (map[string][]byte, error) {
	return a.openSealed(b, b.GetSpec().GetSecrets(), "secret")
}

// openSealed opens sealed values of build b (what names them in errors:
// "secret") with the agent's key, by id, each for the binding it must have
// been sealed with: b's tenant, b's seal nonce and its own id. A value
// copied from another build or tenant, or moved to another id, is refused.
// Errors name the value by id, never by its bytes.
func (a *Agent) openSealed(b *kilnv1.Build, sealed []*kilnv1.SealedSecret, what string) (map[string][]byte, error) {
	if len(sealed) == 0 {
		return nil, nil
	}
	if a.cfg.SecretsKey == nil {
		return nil, fmt.Errorf("the build has %ss, and agent %q has no secrets key to open them (--secrets-key-file)", what, a.cfg.Name)
	}
	out := make(map[string][]byte, len(sealed))
	for _, s := range sealed {
		if s.GetKeyId() != a.cfg.SecretsKey.KeyID() {
			return nil, fmt.Errorf("%s %q is sealed to key %s, and agent %q holds key %s: the farm's agents and gateways must share one secrets key", what, s.GetId(), s.GetKeyId(), a.cfg.Name, a.cfg.SecretsKey.KeyID())
		}
		v, err := a.cfg.SecretsKey.Open(seal.Binding{Tenant: b.GetTenant(), Nonce: b.GetSpec().GetSealNonce(), ID: s.GetId()}, s.GetSealed())
		switch {
		case errors.Is(err, seal.ErrWrongBinding):
			return nil, fmt.Errorf("sealed %s %q was %w", what, s.GetId(), err)
		case err != nil:
			return nil, fmt.Errorf("%s %q: %w", what, s.GetId(), err)
		}
		out[s.GetId()] = v
	}
	return out, nil
}

// openRegistryAuth opens build b's registry credentials: by registry host,
// JSON {"username", "password", "identitytoken"} sealed to the farm's key.
func (a *Agent) openRegistryAuth(b *kilnv1.Build) (engine.Credentials, error) {
	opened, err := a.openSealed(b, b.GetSpec().GetRegistryAuth(), "registry credential")
	if err != nil || len(opened) == 0 {
		return nil, err
	}
	creds := make(engine.Credentials, len(opened))
	for host, v := range opened {
		var c struct {
			Username      string `json:"username"`
			Password      string `json:"password"`
			IdentityToken string `json:"identitytoken"`
		}
		if err := json.Unmarshal(v, &c); err != nil { // never quote v: it holds the password
			return nil, fmt.Errorf("registry credential for %s is not the JSON object kiln clients seal", host)
		}
		creds[host] = registry.AuthConfig{Username: c.Username, Password: c.Password, IdentityToken: c.IdentityToken, ServerAddress: host}
	}
	return creds, nil
}

// maskedValues is what a build's output must not show: its secrets and
// the passwords and tokens of its registry credentials.
func maskedValues(secrets map[string][]byte, creds engine.Credentials) map[string][]byte {
	if len(creds) == 0 {
		return secrets
	}
	out := maps.Clone(secrets)
	if out == nil {
		out = map[string][]byte{}
	}
	for host, c := range creds {
		out["registry "+host+" password"] = []byte(c.Password)
		out["registry "+host+" token"] = []byte(c.IdentityToken)
	}
	return out
}
