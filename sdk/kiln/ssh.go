package kiln

import (
	"errors"
	"fmt"
	"os"

	kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"
	"github.com/kilnbuild/kiln/proto/rules"
	"github.com/kilnbuild/kiln/proto/rules/sshid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// SSH keys (BuildRequest.SSH, buildx --ssh) travel as build secrets do:
// sealed here to the farm's secrets key, bound to the tenant, the build and
// the ssh id, opened only by the agent that runs the build, which serves
// them from memory as an ssh agent to the build's RUN --mount=type=ssh
// steps. A step signs with them through the agent's socket; the keys
// themselves never enter the build. The rules are proto/rules/sshid's.

// ReadSSHKeys reads the private key files of one ssh id (--ssh ID=PATH[,PATH...])
// into the value BuildRequest.SSH takes: their keys' PEM blocks,
// concatenated. Each file must hold a private key in PEM or OpenSSH format
// that needs no passphrase (an encrypted key's error matches
// ErrSSHKeyEncrypted). An ssh-agent socket is refused (the error matches
// ErrSSHAgentSocket): an ssh-agent never gives out its keys, so they cannot
// be sent to the farm. Errors name the files, never the keys' bytes.
func ReadSSHKeys(paths ...string) ([]byte, error) {
	if len(paths) == 0 {
		return nil, invalidArgumentf("no ssh key file given")
	}
	if len(paths) > sshid.MaxKeysPerID {
		return nil, invalidArgumentf("%d ssh key files given, at most %d allowed", len(paths), sshid.MaxKeysPerID)
	}
	files := make([][]byte, len(paths))
	for i, p := range paths {
		data, err := readSSHKeyFile(p)
		if err != nil {
			return nil, err
		}
		files[i] = data
	}
	value, err := sshid.Keys(files)
	if err != nil {
		i := sshid.KeyIndex(err)
		if i < 0 {
			return nil, invalidArgumentf("%v", err)
		}
		return nil, &sshKeyError{path: paths[i], err: err}
	}
	return value, nil
}

var (
	// ErrSSHAgentSocket matches ReadSSHKeys's error for an ssh-agent
	// socket.
	ErrSSHAgentSocket = errors.New("an ssh-agent socket cannot be forwarded to the farm")
	// ErrSSHKeyEncrypted matches ReadSSHKeys's error for a key that needs
	// a passphrase.
	ErrSSHKeyEncrypted = sshid.ErrEncrypted
)

// readSSHKeyFile reads one key file, refusing sockets, directories and
// files larger than a key can be.
func readSSHKeyFile(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, invalidArgumentf("ssh key %v", unwrapPath(err, path))
	}
	switch {
	case fi.Mode()&os.ModeSocket != 0:
		return nil, &sshKeyError{path: path, err: ErrSSHAgentSocket, hint: "is a socket (an ssh-agent's?), and an ssh-agent never gives out its private keys, so kiln cannot send them to the farm: name the key file instead, e.g. --ssh default=$HOME/.ssh/id_ed25519"}
	case fi.IsDir():
		return nil, &sshKeyError{path: path, err: rules.Invalidf("is a directory"), hint: "is a directory: name the private key file in it, e.g. " + path + "/id_ed25519"}
	case !fi.Mode().IsRegular():
		return nil, &sshKeyError{path: path, err: rules.Invalidf("not a regular file"), hint: "is not a regular file"}
	case fi.Size() > sshid.MaxValueBytes:
		return nil, &sshKeyError{path: path, err: rules.Invalidf("too large"), hint: fmt.Sprintf("is %d bytes, too large for an ssh private key file", fi.Size())}
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, invalidArgumentf("ssh key %v", unwrapPath(err, path))
	}
	return data, nil
}

// sshKeyError is ReadSSHKeys's error about one key file: it names the
// file and says what to do, matching codes.InvalidArgument and err.
type sshKeyError struct {
	path string
	err  error
	hint string // replaces the default wording, when set
}

func (e *sshKeyError) Error() string {
	switch {
	case e.hint != "":
		return fmt.Sprintf("ssh key %s %s", e.path, e.hint)
	case errors.Is(e.err, sshid.ErrEncrypted):
		return fmt.Sprintf("ssh key %s is encrypted with a passphrase, which nobody can type on the farm: use a key without one (a deploy key), or a decrypted copy (cp KEY COPY && ssh-keygen -p -N '' -f COPY)", e.path)
	case errors.Is(e.err, sshid.ErrNoKey):
		return fmt.Sprintf("ssh key %s holds no private key in PEM or OpenSSH format (name the private key, not the .pub file)", e.path)
	}
	return fmt.Sprintf("ssh key %s: %v", e.path, e.err)
}

func (e *sshKeyError) Unwrap() error { return e.err }

// GRPCStatus makes the error match codes.InvalidArgument, as the SDK's
// other refusals of bad input do.
func (e *sshKeyError) GRPCStatus() *status.Status {
	return status.New(codes.InvalidArgument, e.Error())
}

// unwrapPath returns err's cause after path, without os's "stat PATH:"
// prefix doubled.
func unwrapPath(err error, path string) string {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return path + ": " + pe.Err.Error()
	}
	return err.Error()
}

// checkSSH checks a request's ssh keys against the farm's rules before
// anything is sent: ids, sizes, and that each value holds keys the agent
// can serve. Errors name the ssh id, never the keys.
func checkSSH(req BuildRequest) error {
	if len(req.SSH) == 0 {
		return nil
	}
	if req.Spec.GetBuilder() == kilnv1.Builder_BUILDER_CLASSIC {
		return invalidArgumentf("--ssh keys need the BuildKit builder, but the classic builder was asked for")
	}
	sizes := make(map[string]int, len(req.SSH)+len(req.Spec.GetSsh()))
	for id, v := range req.SSH {
		sizes[id] = len(v)
		if err := sshid.Valid(id); err != nil {
			return invalidArgumentf("%v", err)
		}
		if _, err := sshid.Parse(v); err != nil {
			return invalidArgumentf("ssh id %q: %v", id, err)
		}
	}
	for _, s := range req.Spec.GetSsh() {
		if _, dup := req.SSH[s.GetId()]; dup {
			return invalidArgumentf("ssh id %q is given twice (sealed in the spec and in SSH)", s.GetId())
		}
		sizes[s.GetId()] = 0 // sealed already: its count matters, not its size
	}
	if err := sshid.CheckSet(sizes); err != nil {
		return invalidArgumentf("%v", err)
	}
	return nil
}
