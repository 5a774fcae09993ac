#!/usr/bin/env bash
# run.sh is `make run`: start kilnd on the local Docker engine, build and push
# examples/hello through it, then keep kilnd in the foreground until Ctrl-C.
# `make run` has already run scripts/dev-env.sh (engine + registry) and
# `make build` (bin/). KILN_ENGINE=buildkit (or buildkit-rootless) gives
# kilnd's agent a standalone buildkitd of its own (scripts/buildkitd.sh)
# instead of the local Docker engine.
set -euo pipefail
cd "$(dirname "$0")/.."

REGISTRY=${KILN_DEV_REGISTRY:-127.0.0.1:5000}
scripts/dev-env.sh base

state=$(mktemp -d)
chmod 0755 "$state" # a rootless buildkitd's user keeps its state in it
ready="$state/ready.json"
pid=
stop() {
  [ -z "$pid" ] || { kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }
  [ ! -d "$state/buildkitd" ] || scripts/buildkitd.sh stop --state "$state/buildkitd" || true
  rm -rf "$state"
}
trap stop EXIT
trap 'exit 130' INT TERM

engine=()
case "${KILN_ENGINE:-docker}" in
  docker) ;;
  buildkit | buildkit-rootless)
    bk=(--state "$state/buildkitd")
    [ "$KILN_ENGINE" = buildkit ] || bk+=(--rootless)
    addr=$(scripts/buildkitd.sh start "${bk[@]}" | tail -n 1)
    engine=(--engine "buildkit://${addr#unix://}")
    ;;
  *) echo "run: KILN_ENGINE=$KILN_ENGINE: want docker, buildkit or buildkit-rootless" >&2; exit 2 ;;
esac

bin/kilnd --ready-file "$ready" "${engine[@]}" "$@" &
pid=$!

for _ in $(seq 1 300); do
  [ -s "$ready" ] && break
  kill -0 "$pid" 2>/dev/null || { echo "run: kilnd exited; see its log above (is port 7700 already in use by another kilnd?)" >&2; exit 1; }
  sleep 0.2
done
[ -s "$ready" ] || { echo "run: kilnd did not become ready" >&2; exit 1; }
grpc=$(sed -E 's/.*"grpc":"([^"]+)".*/\1/' "$ready")

echo
echo "==> kiln build -t $REGISTRY/kiln/hello:latest --push examples/hello"
bin/kiln build --gateway "$grpc" --progress plain -t "$REGISTRY/kiln/hello:latest" --push \
  --metadata-file "$state/metadata.json" examples/hello
echo
echo "==> pushed $REGISTRY/kiln/hello:latest"
cat "$state/metadata.json"; echo
echo
echo "kilnd is serving on $grpc (gRPC). Try: bin/kiln build -t $REGISTRY/you/app:dev --push examples/hello"
echo "Press Ctrl-C to stop."
wait "$pid"
