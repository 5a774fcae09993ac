// Package enginetest gives tests a real Docker engine and registry: the
// engine named by DOCKER_HOST (else the default socket), the registry at
// 127.0.0.1:5000 (else KILN_TEST_REGISTRY), a busybox base image in both,
// and helpers to write build contexts and read manifests. `make dev-env`
// starts what is missing. A test that finds no engine or registry fails; it
// never skips.
package enginetest
