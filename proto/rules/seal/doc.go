// Package seal seals build secrets and registry credentials to the farm's
// secrets key, bound to the tenant and the build they are for, so that only
// the farm's agents can read them and only in that build.
//
//	kiln CLI / Go SDK                     gateway, NATS, KV                agent
//	─────────────────                     ─────────────────                ─────
//	GetSecretsKey ──▶ public key, tenant
//	nonce := NewNonce()  (one per build)
//	Seal(key, Binding{tenant, nonce, id}, value)
//	  ──▶ BuildSpec{seal_nonce, secrets: [{id, sealed, key_id}]}
//	                                      checks sizes and the nonce
//	                                      (≥ MinNonceBytes, never seen
//	                                      before for the tenant); sees
//	                                      ids and ciphertext only ──▶ PrivateKey.Open(
//	                                                                    Binding{record's tenant,
//	                                                                    spec's nonce, secret's id},
//	                                                                    sealed)
//
// A sealed value is an anonymous NaCl box (X25519 key agreement with a
// one-time sender key, XSalsa20-Poly1305) around an envelope:
//
//	version (1 byte, 1) ‖ SHA-256(binding) (32 bytes) ‖ value
//
// where the binding is the tenant, the build's seal nonce and the value's
// id, each length-prefixed after a domain-separation label. Whoever holds
// the public key can seal; only the holder of the private key can open,
// and Open refuses an envelope bound to anything but the binding it is
// given. A sealed value copied out of one build's record into another
// build's spec therefore opens to nothing: the other build has another
// nonce (the gateway never accepts a nonce twice for a tenant), or another
// tenant, or the value was moved to another id. Sealing the same value
// twice gives different bytes.
package seal
