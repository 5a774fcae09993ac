#!/usr/bin/env bash
# cluster.sh runs kiln distributed on one machine: a nats-server cluster
# (JetStream, one nkey per role), kiln-gateway, kiln-scheduler and
# kiln-agent processes, each agent on its own dockerd — the same binaries a
# real deployment runs, each its own process. It is a thin wrapper over
# deploy/local/kiln-cluster (package deploy/local/localfarm); Ctrl-C stops
# everything it started, by pid.
#
#   deploy/local/cluster.sh --nats 3 --gateways 2 --schedulers 2 --agents 3 \
#       [--replicas R] [--slots K] [--ready-file FILE] [--dir DIR]
#
# Builds bin/ first (make build); agents need root (each dockerd gets its
# own bridge).
set -euo pipefail
cd "$(dirname "$0")/../.."
# make build: cheap when bin/ is current (go build leaves an up-to-date
# binary alone), and never a stale binary from an older tree.
make --no-print-directory build >&2
# Built, then exec'd (not `go run`): Ctrl-C and SIGTERM must reach
# kiln-cluster itself, which stops the farm in order.
go build -o bin/kiln-cluster ./deploy/local/kiln-cluster
exec bin/kiln-cluster "$@"
