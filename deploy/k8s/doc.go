// Package k8s holds kiln's Kubernetes manifests (a kustomize base and its
// overlays) and the test that renders every overlay and decodes each
// object strictly with the Kubernetes API types.
package k8s
