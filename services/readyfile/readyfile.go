// Package readyfile writes the --ready-file every kiln binary offers: a JSON
// object of the addresses it serves, written atomically once every part is
// serving, so scripts and tests wait on an event instead of a sleep.
package readyfile

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// Write writes addrs as JSON to path atomically; an empty path writes nothing.
func Write(path string, addrs map[string]string) error {
	if path == "" {
		return nil
	}
	data, err := json.Marshal(addrs)
	if err != nil {
		return err
	}
	return WriteFile(path, data)
}

// WriteFile writes data and a newline to path atomically: a reader sees
// the old file or the whole new one, never a part.
func WriteFile(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".ready-*")
	if err != nil {
		return fmt.Errorf("write ready file: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(append(data, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("write ready file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write ready file: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write ready file: %w", err)
	}
	return nil
}
