package cli

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/kilnbuild/kiln/proto/rules/sshid"
	"github.com/kilnbuild/kiln/sdk/kiln"
)

// parseSSH reads the keys of --ssh flags into a map by ssh id, as
// kiln.BuildRequest.SSH takes them. The syntax is buildx's (docker buildx
// build --ssh): "ID=PATH[,PATH...]", "ID" alone, or "default"; an empty
// ID is "default", an empty value is no flag. Unlike buildx, PATH must be
// a private key file: buildx also forwards an ssh-agent socket (the one
// $SSH_AUTH_SOCK names, when no PATH is given), but an ssh-agent never
// gives out its private keys and the farm builds on another machine, so a
// socket is refused with a message showing the key-file form. Errors name
// ids and files, never keys.
func parseSSH(values []string, lookupEnv func(string) (string, bool)) (map[string][]byte, error) {
	if len(values) == 0 {
		return nil, nil
	}
	out := make(map[string][]byte, len(values))
	sizes := make(map[string]int, len(values))
	for _, v := range values {
		if v == "" { // as buildx: an empty --ssh is no ssh
			continue
		}
		id, list, _ := strings.Cut(v, "=")
		if id == "" {
			id = sshid.DefaultID
		}
		if err := sshid.Valid(id); err != nil {
			return nil, &usageError{msg: fmt.Sprintf("invalid --ssh %q: %v", v, err)}
		}
		if _, dup := out[id]; dup {
			return nil, &usageError{msg: fmt.Sprintf("ssh id %q is given twice: give all its keys in one --ssh %s=KEY[,KEY...]", id, id)}
		}
		var paths []string
		if list != "" {
			paths = strings.Split(list, ",")
		}
		if len(paths) == 0 {
			sock, _ := lookupEnv("SSH_AUTH_SOCK")
			if sock == "" {
				return nil, &usageError{msg: fmt.Sprintf("--ssh %s names no key file, and $SSH_AUTH_SOCK is not set (buildx would forward that ssh-agent, which kiln cannot do: the farm builds elsewhere): name the private key file, e.g. --ssh %s=$HOME/.ssh/id_ed25519", v, id)}
			}
			paths = []string{sock}
		}
		value, err := kiln.ReadSSHKeys(paths...)
		if errors.Is(err, kiln.ErrSSHAgentSocket) {
			return nil, &usageError{msg: fmt.Sprintf("--ssh %s: %s is a socket (an ssh-agent's): an ssh-agent never gives out its private keys, so kiln cannot forward it to the farm, which builds on another machine. Name the private key file instead, e.g. --ssh %s=$HOME/.ssh/id_ed25519", v, socketIn(paths), id)}
		}
		if err != nil {
			return nil, &usageError{msg: fmt.Sprintf("--ssh %s: %v", id, err)}
		}
		out[id] = value
		sizes[id] = len(value)
	}
	if err := sshid.CheckSet(sizes); err != nil {
		return nil, &usageError{msg: err.Error()}
	}
	return out, nil
}

// socketIn names the socket among paths: the one ReadSSHKeys refused (the
// only path, when --ssh gave none and $SSH_AUTH_SOCK was used).
func socketIn(paths []string) string {
	for _, p := range paths {
		if isSocket(p) {
			return p
		}
	}
	return strings.Join(paths, ",")
}

func isSocket(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode()&os.ModeSocket != 0
}
