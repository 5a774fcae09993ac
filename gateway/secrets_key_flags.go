package gateway

import (
	"flag"
	"fmt"

	"github.com/kilnbuild/kiln/services/sealed"
)

// SecretsKeyFlags are how a gateway learns the farm's secrets public key,
// the key GetSecretsKey hands out. Without either flag the farm refuses
// builds with secrets.
type SecretsKeyFlags struct {
	// PublicKey is the public key in base64.
	PublicKey string
	// KeyFile is the agents' private key file; the gateway derives the
	// public key from it and keeps nothing else.
	KeyFile string
}

// Flags registers --secrets-public-key and --secrets-key-file (each also
// read from KILN_<FLAG>).
func (f *SecretsKeyFlags) Flags(fs *flag.FlagSet) {
	fs.StringVar(&f.PublicKey, "secrets-public-key", "", "the farm's public key for build secrets (base64, as 'kilnd secrets-key' prints it); clients seal secrets to it")
	fs.StringVar(&f.KeyFile, "secrets-key-file", "", "the agents' secrets key file, to derive the public key from (prefer --secrets-public-key: then the gateway's host never holds the private key)")
}

// Load returns the configured public key, or nil when none is configured.
func (f SecretsKeyFlags) Load() (*sealed.PublicKey, error) {
	switch {
	case f.PublicKey != "" && f.KeyFile != "":
		return nil, fmt.Errorf("give --secrets-public-key or --secrets-key-file, not both")
	case f.PublicKey != "":
		pub, err := sealed.ParsePublicKey(f.PublicKey)
		if err != nil {
			return nil, fmt.Errorf("--secrets-public-key: %w", err)
		}
		return &pub, nil
	case f.KeyFile != "":
		k, err := sealed.LoadPrivateKey(f.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("--secrets-key-file: %w", err)
		}
		pub := k.PublicKey()
		return &pub, nil
	}
	return nil, nil
}
