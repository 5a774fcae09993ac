package tenants

import kilnv1 "github.com/kilnbuild/kiln/proto/gen/go/kiln/v1"

// BuildPolicy is what the gateway stamps into each build record of the
// tenant (Build.policy): its sandbox policy, which the agent enforces, and
// its weight and cap, which the scheduler's fairness uses, its log limit,
// which the schedulers' report handler enforces, and its automatic warm
// start prefix, which the agent exports and imports the cache under.
func (t *Tenant) BuildPolicy() *kilnv1.TenantPolicy {
	return &kilnv1.TenantPolicy{
		AllowRemoteAdd:   t.Policy.AllowRemoteAdd,
		AllowNetworkHost: t.Policy.AllowNetworkHost,
		AllowInsecure:    t.Policy.AllowInsecure,
		FrontendAllow:    append([]string(nil), t.Policy.FrontendAllow...),
		Weight:           uint32(max(t.Weight, 0)),
		MaxConcurrent:    uint32(max(t.MaxConcurrent, 0)),
		LogMaxBytes:      uint64(max(t.LogMaxBytes, 0)),
		CacheRegistry:    t.CacheRegistry,
	}
}
