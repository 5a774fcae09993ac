package agent

import (
	"fmt"
	"maps"

	sshagent "golang.org/x/crypto/ssh/agent"

	"github.com/kilnbuild/kiln/agent/engine"
	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules/sshid"
)

// A build's ssh keys (BuildSpec.ssh, --ssh) arrive sealed like its
// secrets. sshOptions opens them with the agent's key, parses them
// (proto/rules/sshid) into one in-memory keyring per ssh id, and hands the
// keyrings to the engine's session, which serves them to this build's
// RUN --mount=type=ssh steps alone (engine's sshForwarder). The keys are
// never written to disk, and the build's output masks them like secrets.

// sshOptions sets o.SSH from build b's ssh keys, and makes rep mask the
// keys besides the build's secrets (o.Secrets) and registry passwords
// (creds). A build without ssh keys leaves both as they are. Errors name
// the ssh id, never a key.
func (a *Agent) sshOptions(o *engine.BuildKitOptions, b *kilnv1.Build, creds engine.Credentials, rep *reporter) error {
	opened, err := a.openSealed(b, b.GetSpec().GetSsh(), "ssh key")
	if err != nil || len(opened) == 0 {
		return err
	}
	agents := make(map[string]sshagent.Agent, len(opened))
	for id, value := range opened {
		keys, err := sshid.Parse(value)
		if err != nil {
			return fmt.Errorf("ssh id %q: %w", id, err)
		}
		keyring := sshagent.NewKeyring()
		for i, k := range keys {
			if err := keyring.Add(sshagent.AddedKey{PrivateKey: k}); err != nil {
				return fmt.Errorf("ssh id %q: key %d: %w", id, i+1, err)
			}
		}
		agents[id] = keyring
	}
	o.SSH = agents
	masked := maps.Clone(o.Secrets)
	if masked == nil {
		masked = map[string][]byte{}
	}
	for id, value := range opened {
		masked["ssh "+id] = value
	}
	rep.mask = newMasker(maskedValues(masked, creds))
	return nil
}
