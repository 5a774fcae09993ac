package cli

import (
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/kilnbuild/kiln/proto/rules/secretid"
	"github.com/kilnbuild/kiln/sdk/kiln"
)

// secretSource is one --secret flag: where a build secret's value comes
// from. The rules are buildx's (docker buildx build --secret):
//
//   - the value is CSV fields key=value; keys are id, src (or source), env
//     and type (file or env);
//   - type=env with src= but no env= reads the variable src names;
//   - without id=, the id is the base name of src, or the env name;
//   - with only id= (no src=, no env=), type=env reads the variable id,
//     type=file the file id, and with no type the variable id when it is
//     set, else the file id.
//
// Unlike buildx, giving both src= and env= is refused rather than one
// silently winning, and a variable named with env= must be set.
type secretSource struct {
	id string
	// file is the file to read (src=); "" when env is used.
	file string
	// env is the environment variable to read (env=); "" when file is used.
	env string
	// detect: neither src= nor env= nor type= was given, so the value is
	// the variable id if set, else the file id.
	detect bool
}

// parseSecretFlag parses one --secret value. It reads no file and no
// variable; resolve does.
func parseSecretFlag(value string) (secretSource, error) {
	r := csv.NewReader(strings.NewReader(value))
	r.FieldsPerRecord = -1
	fields, err := r.Read()
	if err != nil {
		return secretSource{}, fmt.Errorf("invalid --secret %q: %v", value, unwrapCSV(err))
	}
	if _, err := r.Read(); !errors.Is(err, io.EOF) {
		return secretSource{}, fmt.Errorf("invalid --secret %q: more than one line", value)
	}
	var s secretSource
	var typ string
	for _, field := range fields {
		k, v, ok := strings.Cut(field, "=")
		if !ok {
			return secretSource{}, fmt.Errorf("invalid --secret %q: field %q must be a key=value pair", value, field)
		}
		switch strings.ToLower(k) {
		case "type":
			if v != "file" && v != "env" {
				return secretSource{}, fmt.Errorf("invalid --secret %q: unsupported secret type %q (want file or env)", value, v)
			}
			typ = v
		case "id":
			s.id = v
		case "src", "source":
			s.file = v
		case "env":
			s.env = v
		default:
			return secretSource{}, fmt.Errorf("invalid --secret %q: unexpected key %q (want id, src, env or type)", value, k)
		}
	}
	switch {
	case s.file != "" && s.env != "" && typ == "":
		return secretSource{}, fmt.Errorf("invalid --secret %q: give src= (a file) or env= (a variable), not both", value)
	case typ == "file" && s.env != "":
		return secretSource{}, fmt.Errorf("invalid --secret %q: env= does not go with type=file", value)
	case typ == "env" && s.env != "" && s.file != "":
		return secretSource{}, fmt.Errorf("invalid --secret %q: give src= or env= for type=env, not both", value)
	case typ == "env" && s.env == "":
		s.env, s.file = s.file, ""
	}
	if s.id == "" {
		switch {
		case s.file != "":
			s.id = filepath.Base(s.file)
		case s.env != "":
			s.id = s.env
		default:
			return secretSource{}, fmt.Errorf("invalid --secret %q: id= is required (or src= or env= to name the secret after)", value)
		}
	}
	if err := kiln.ValidateSecretID(s.id); err != nil {
		return secretSource{}, fmt.Errorf("invalid --secret %q: %v", value, err)
	}
	if s.file == "" && s.env == "" {
		switch typ {
		case "env":
			s.env = s.id
		case "file":
			s.file = s.id
		default:
			s.detect = true
		}
	}
	return s, nil
}

func unwrapCSV(err error) error {
	var pe *csv.ParseError
	if errors.As(err, &pe) {
		return pe.Err
	}
	if errors.Is(err, io.EOF) {
		return errors.New("empty")
	}
	return err
}

// resolve reads the secret's value. Errors name the secret, the file or
// the variable, never the value.
func (s secretSource) resolve(lookupEnv func(string) (string, bool)) ([]byte, error) {
	env, file := s.env, s.file
	if s.detect {
		if _, ok := lookupEnv(s.id); ok {
			env = s.id
		} else {
			file = s.id
		}
	}
	if env != "" {
		v, ok := lookupEnv(env)
		if !ok {
			return nil, fmt.Errorf("secret %q: environment variable %s is not set", s.id, env)
		}
		if len(v) > kiln.MaxSecretBytes {
			return nil, fmt.Errorf("secret %q: environment variable %s is %d bytes, over the limit of %d bytes", s.id, env, len(v), kiln.MaxSecretBytes)
		}
		return []byte(v), nil
	}
	f, err := os.Open(file)
	if err != nil {
		if s.detect && errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("secret %q: no environment variable %s and no file %s: give src=FILE or env=VARIABLE", s.id, s.id, file)
		}
		return nil, fmt.Errorf("secret %q: %v", s.id, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("secret %q: %v", s.id, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("secret %q: %s is not a regular file", s.id, file)
	}
	data, err := io.ReadAll(io.LimitReader(f, kiln.MaxSecretBytes+1))
	if err != nil {
		return nil, fmt.Errorf("secret %q: reading %s: %v", s.id, file, unwrapPathError(err))
	}
	if len(data) > kiln.MaxSecretBytes {
		return nil, fmt.Errorf("secret %q: file %s is %d bytes, over the limit of %d bytes", s.id, file, max(fi.Size(), int64(len(data))), kiln.MaxSecretBytes)
	}
	return data, nil
}

// parseSecrets reads the values of --secret flags into a map by id.
func parseSecrets(values []string, lookupEnv func(string) (string, bool)) (map[string][]byte, error) {
	if len(values) == 0 {
		return nil, nil
	}
	out := make(map[string][]byte, len(values))
	sizes := make(map[string]int, len(values))
	for _, v := range values {
		if v == "" { // as buildx: an empty --secret is no secret
			continue
		}
		s, err := parseSecretFlag(v)
		if err != nil {
			return nil, &usageError{msg: err.Error()}
		}
		if _, dup := out[s.id]; dup {
			return nil, &usageError{msg: fmt.Sprintf("secret id %q is given twice: each --secret needs its own id", s.id)}
		}
		value, err := s.resolve(lookupEnv)
		if err != nil {
			return nil, &usageError{msg: err.Error()}
		}
		out[s.id] = value
		sizes[s.id] = len(value)
	}
	if err := secretid.CheckSet(sizes); err != nil {
		return nil, &usageError{msg: err.Error()}
	}
	return out, nil
}
