// Package sealed seals build secrets to the farm's secrets key, so that only
// agents can read them.
//
//	kiln CLI / Go SDK                 gateway, NATS, KV              agent
//	─────────────────                 ─────────────────              ─────
//	GetSecretsKey ──▶ public key
//	Seal(public key, value) ──▶ SealedSecret{id, sealed, key_id} ──▶ PrivateKey.Open(sealed)
//	                                  sees ids, key ids and              │
//	                                  ciphertext only                    ▼
//	                                                          BuildKit secretsprovider
//
// A sealed value is an anonymous NaCl box (X25519 key agreement with a
// one-time sender key, XSalsa20-Poly1305): whoever holds the public key can
// seal, only the holder of the private key can open, and sealing the same
// value twice gives different bytes. The farm's key pair lives in one file
// (see LoadOrCreatePrivateKey) on the agents' hosts; the gateway needs only
// the public key.
//
// The limits (MaxSecretBytes, MaxSecrets, MaxTotalSecretBytes) and ValidID
// are the farm's rules for a build's secrets; the Go SDK, which depends on
// the proto module alone, mirrors them.
package sealed
