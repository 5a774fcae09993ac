// Package tenants holds the farm's tenants: who may call the gateway (token
// hashes, admin role), where each may push, and the limits and sandbox
// policy its builds get. The gateway reads them from a YAML tenants file
// (see File) and reloads it on SIGHUP.
package tenants

// Tenant is one team sharing the farm.
type Tenant struct {
	// Name is the tenant's id: it owns builds, namespaces cache mounts and
	// is what sealed values are bound to.
	Name string `yaml:"name"`
	// TokenHashes are the tenant's tokens, hashed (argon2id or bcrypt);
	// several so tokens can be rotated. Plaintext is never stored.
	TokenHashes []string `yaml:"tokens"`
	// Admin lets the tenant's tokens list and drain agents.
	Admin bool `yaml:"admin,omitempty"`
	// PushNamespaces are the image names the tenant may push to, as
	// patterns such as "registry.example.com/team-a/*". None: no push.
	PushNamespaces []string `yaml:"push,omitempty"`
	// MaxConcurrent caps the tenant's builds assigned or running at once
	// (0: the scheduler's default cap).
	MaxConcurrent int `yaml:"max_concurrent,omitempty"`
	// Weight is the tenant's share of the farm in weighted round-robin
	// (0: 1).
	Weight int `yaml:"weight,omitempty"`
	// ContextMaxBytes and ContextMaxEntries lower the gateway's context
	// limits for this tenant (0: the gateway's).
	ContextMaxBytes   int64 `yaml:"context_max_bytes,omitempty"`
	ContextMaxEntries int   `yaml:"context_max_entries,omitempty"`
	// CASQuotaBytes bounds the context blob bytes this tenant may have
	// stored on the farm (0: the gateway's --cas-quota default).
	CASQuotaBytes int64 `yaml:"cas_quota_bytes,omitempty"`
	// LogMaxBytes bounds the log text each attempt of the tenant's builds
	// keeps; the log is cut there with a marker line (0: 64 MiB, the
	// farm's default, agentproto.DefaultLogMaxBytes).
	LogMaxBytes int64 `yaml:"log_max_bytes,omitempty"`
	// CacheRegistry is the repository prefix under which the automatic
	// warm start keeps the cache of each lineage of the tenant's builds
	// (e.g. "registry:5000/team-a-cache"); it wins over the gateway's
	// --cache-registry ("": the gateway's).
	CacheRegistry string `yaml:"cache_registry,omitempty"`
	// Policy is what the tenant's builds may do in the sandbox.
	Policy Policy `yaml:"policy,omitempty"`
}

// Policy is a tenant's build sandbox policy; the zero value refuses every
// optional capability. It travels in the build record as
// kilnv1.TenantPolicy and the agent enforces it.
type Policy struct {
	AllowRemoteAdd   bool     `yaml:"allow_remote_add,omitempty"`
	AllowNetworkHost bool     `yaml:"allow_network_host,omitempty"`
	AllowInsecure    bool     `yaml:"allow_insecure,omitempty"`
	FrontendAllow    []string `yaml:"frontend_allow,omitempty"`
}
