package main

import (
	"encoding/json"
	"fmt"
	"os"
)

// meta is what the benchmark reads of a --metadata-file.
type meta struct {
	ID     string
	Steps  int
	Cached int
}

func readMeta(path string) (meta, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return meta{}, fmt.Errorf("metadata file: %w", err)
	}
	var m struct {
		ID     string  `json:"kiln.build.id"`
		Steps  float64 `json:"kiln.cache.steps"`
		Cached float64 `json:"kiln.cache.cached"`
	}
	if err := json.Unmarshal(data, &m); err != nil {
		return meta{}, fmt.Errorf("metadata file %s: %w", path, err)
	}
	return meta{ID: m.ID, Steps: int(m.Steps), Cached: int(m.Cached)}, nil
}
