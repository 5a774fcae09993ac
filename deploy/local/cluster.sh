#!/usr/bin/env bash
# cluster.sh runs kiln distributed on one machine: a real nats-server with
# JetStream, kiln-gateway, kiln-scheduler and N kiln-agent processes against
# the local Docker engine — the same binaries a real deployment runs, each
# its own process, each with its own NATS credential (kilnd nats-creds; see
# deploy/nats/README.md). Ctrl-C stops everything it started (by pid).
#
#   deploy/local/cluster.sh [AGENTS]      # default 2 agents
#
# Needs `make build` (bin/) and `make dev-env` (engine, registry).
set -euo pipefail
cd "$(dirname "$0")/../.."
agents=${1:-2}
NATS_SERVER_VERSION=v2.15.2
tools=$PWD/bin/tools
[ -x "$tools/nats-server" ] || GOBIN=$tools go install "github.com/nats-io/nats-server/v2@$NATS_SERVER_VERSION"

state=$(mktemp -d)
pids=()
stop() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$state"; }
trap stop EXIT
trap 'exit 130' INT TERM

wait_ready() { # wait_ready FILE PID
  for _ in $(seq 1 300); do
    [ -s "$1" ] && return 0
    kill -0 "$2" 2>/dev/null || { echo "cluster: process $2 exited" >&2; exit 1; }
    sleep 0.2
  done
  echo "cluster: $1 never appeared" >&2; exit 1
}

# One nkey per role and per agent, and the server's authorization block.
creds=$state/creds
bin/kilnd nats-creds "$creds" $(for i in $(seq 1 "$agents"); do echo "local-$i"; done) > /dev/null
cat > "$creds/nats.conf" <<CONF
listen: 127.0.0.1:4222
jetstream { store_dir: "$state/nats" }
include "auth.conf"
CONF
"$tools/nats-server" -c "$creds/nats.conf" > "$state/nats.log" 2>&1 &
pids+=($!)
export KILN_NATS_URL=nats://127.0.0.1:4222

bin/kiln-gateway --listen 127.0.0.1:7700 --http-listen 127.0.0.1:7701 --ready-file "$state/gw.json" --nats-nkey-file "$creds/gateway.nk" &
pids+=($!); wait_ready "$state/gw.json" $!
bin/kiln-scheduler --http-listen 127.0.0.1:7702 --ready-file "$state/sched.json" --nats-nkey-file "$creds/scheduler.nk" &
pids+=($!); wait_ready "$state/sched.json" $!
for i in $(seq 1 "$agents"); do
  bin/kiln-agent --name "local-$i" --slots 1 --blob-cache-dir "$state/blobs-$i" --http-listen "127.0.0.1:$((7710 + i))" --ready-file "$state/agent-$i.json" --nats-nkey-file "$creds/agent-local-$i.nk" &
  pids+=($!); wait_ready "$state/agent-$i.json" $!
done
echo "cluster: gateway on 127.0.0.1:7700 with $agents agents; try bin/kiln build examples/hello. Ctrl-C stops it."
wait
