package bus

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

// ClientAuth is how a service proves itself to NATS and checks the server:
// an nkey seed file (nkeys preferred: the seed never crosses the wire) or a
// creds file (user JWT and seed, for an operator-mode NATS), and TLS. All
// empty connects anonymously, as to a dev cluster without auth.
type ClientAuth struct {
	NkeyFile  string
	CredsFile string
	TLSCA     string
	TLSCert   string
	TLSKey    string
}

// Options are the nats.Options that apply a.
func (a ClientAuth) Options() ([]nats.Option, error) {
	var opts []nats.Option
	switch {
	case a.NkeyFile != "" && a.CredsFile != "":
		return nil, errors.New("nats: give an nkey file or a creds file, not both")
	case a.NkeyFile != "":
		o, err := nats.NkeyOptionFromSeed(a.NkeyFile)
		if err != nil {
			return nil, fmt.Errorf("nats nkey file %s: %w", a.NkeyFile, err)
		}
		opts = append(opts, o)
	case a.CredsFile != "":
		opts = append(opts, nats.UserCredentials(a.CredsFile))
	}
	if a.TLSCA != "" {
		opts = append(opts, nats.RootCAs(a.TLSCA))
	}
	if (a.TLSCert == "") != (a.TLSKey == "") {
		return nil, errors.New("nats: a TLS client certificate needs both its certificate and key files")
	}
	if a.TLSCert != "" {
		opts = append(opts, nats.ClientCert(a.TLSCert, a.TLSKey))
	}
	return opts, nil
}

// Seeds are the nkey seed files of a farm's roles, made by
// LoadOrCreateSeeds, and the identities the server must accept.
type Seeds struct {
	Dir        string
	Identities []Identity
}

// File is the seed file of a role (agent: the agent's name).
func (s Seeds) File(role Role, agent string) string {
	return filepath.Join(s.Dir, seedFileName(role, agent))
}

// Options are the nats.Options a role connects with: its seed and, for an
// agent, its inbox prefix (its credential may read no other replies).
func (s Seeds) Options(role Role, agent string) ([]nats.Option, error) {
	opts, err := ClientAuth{NkeyFile: s.File(role, agent)}.Options()
	if err != nil {
		return nil, err
	}
	if role == RoleAgent {
		opts = append(opts, nats.CustomInboxPrefix(AgentInboxPrefix(agent)))
	}
	return opts, nil
}

func seedFileName(role Role, agent string) string {
	if role == RoleAgent {
		return "agent-" + agent + ".nk"
	}
	return string(role) + ".nk"
}

// LoadOrCreateSeeds reads the nkey seeds of the gateway, the scheduler and
// the named agents from dir, making those that are missing (dir mode 0700,
// files 0600), and returns them with their public keys.
func LoadOrCreateSeeds(dir string, agents ...string) (Seeds, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return Seeds{}, fmt.Errorf("nats credentials dir: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return Seeds{}, fmt.Errorf("nats credentials dir: %w", err)
	}
	ids := []Identity{{Role: RoleGateway}, {Role: RoleScheduler}}
	for _, a := range agents {
		if err := CheckAgentName(a); err != nil {
			return Seeds{}, err
		}
		ids = append(ids, Identity{Role: RoleAgent, Agent: a})
	}
	s := Seeds{Dir: dir}
	for _, id := range ids {
		pub, err := loadOrCreateSeed(s.File(id.Role, id.Agent))
		if err != nil {
			return Seeds{}, err
		}
		id.PublicKey = pub
		s.Identities = append(s.Identities, id)
	}
	return s, nil
}

// loadOrCreateSeed returns the public key of the user seed in path, making
// the file if it does not exist.
func loadOrCreateSeed(path string) (string, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		kp, err := nkeys.CreateUser()
		if err != nil {
			return "", fmt.Errorf("make nkey: %w", err)
		}
		seed, err := kp.Seed()
		if err != nil {
			return "", fmt.Errorf("make nkey: %w", err)
		}
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return "", fmt.Errorf("write nkey seed: %w", err)
		}
		_, werr := f.Write(append(seed, '\n'))
		if cerr := f.Close(); werr == nil {
			werr = cerr
		}
		if werr != nil {
			return "", fmt.Errorf("write nkey seed %s: %w", path, werr)
		}
		data = seed
	} else if err != nil {
		return "", fmt.Errorf("read nkey seed: %w", err)
	}
	kp, err := nkeys.FromSeed([]byte(strings.TrimSpace(string(data))))
	if err != nil {
		return "", fmt.Errorf("nkey seed %s: %w", path, err)
	}
	defer kp.Wipe()
	pub, err := kp.PublicKey()
	if err != nil {
		return "", fmt.Errorf("nkey seed %s: %w", path, err)
	}
	return pub, nil
}
