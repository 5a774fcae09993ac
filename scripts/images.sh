#!/usr/bin/env bash
# images.sh is `make images`: kiln's container images, built by a kiln farm
# (the farm builds the farm) with nothing pulled from a public registry.
#
#   scripts/images.sh [IMAGE...]    # default: every image below
#
# Images: kilnd kiln-gateway kiln-scheduler kiln-agent (one per binary,
# deploy/docker/Dockerfile with --build-arg BIN=…), kiln (the CLI for CI jobs:
# deploy/docker/cli.Dockerfile, with a static busybox), nats-server (the same
# Dockerfile, nats-server $NATS_SERVER_VERSION from the Go module proxy) and
# engine and registry (deploy/docker/engine.Dockerfile and
# registry.Dockerfile: the host's Debian dockerd, containerd and runc, and
# docker-registry, with their shared libraries, for deploy/compose). Each is tagged
# ${KILN_IMAGE_PREFIX}<image>:${KILN_IMAGE_TAG} (default
# 127.0.0.1:5000/kiln/<image>:dev) and pushed unless KILN_IMAGES_PUSH=0. The
# image also stays in the engine of the agent that built it — with kilnd's
# local farm that is the default engine, which `docker compose` uses.
#
# The binaries are built here, static (CGO_ENABLED=0, -trimpath), into a
# build context with CA certificates and a passwd/group naming the user
# nonroot (65532). With KILN_GATEWAY set the builds go to that farm;
# otherwise the script starts bin/kilnd in local mode on free ports and a
# temporary data dir, and stops it (by pid) when done. Build logs go to
# $KILN_IMAGES_LOG_DIR (default: a temporary dir, kept if a build fails).
#
# Needs the dev environment (`make dev-env`: engine and registry) and the
# kiln CLI and kilnd in $KILN_BIN_DIR (default bin/, `make build`).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

NATS_SERVER_VERSION=v2.15.2
REGISTRY=${KILN_DEV_REGISTRY:-127.0.0.1:5000}
PREFIX=${KILN_IMAGE_PREFIX:-$REGISTRY/kiln/}
TAG=${KILN_IMAGE_TAG:-dev}
PUSH=${KILN_IMAGES_PUSH:-1}
BIN=${KILN_BIN_DIR:-bin}
ALL=(kilnd kiln kiln-gateway kiln-scheduler kiln-agent nats-server engine registry)
images=("$@")
[ ${#images[@]} -gt 0 ] || images=("${ALL[@]}")

log() { printf 'images: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

for img in "${images[@]}"; do
  case " ${ALL[*]} " in *" $img "*) ;; *) die "unknown image $img (one of: ${ALL[*]})" ;; esac
done
[ -x "$BIN/kiln" ] && [ -x "$BIN/kilnd" ] || die "$BIN/kiln and $BIN/kilnd are missing: run make build"

state=$(mktemp -d)
logs=${KILN_IMAGES_LOG_DIR:-$state/logs}
mkdir -p "$logs"
kilnd_pid=
failed=
cleanup() {
  if [ -n "$kilnd_pid" ]; then
    kill -TERM "$kilnd_pid" 2>/dev/null || true
    wait "$kilnd_pid" 2>/dev/null || true
  fi
  if [ -n "$failed" ] && [ -z "${KILN_IMAGES_LOG_DIR:-}" ]; then
    mkdir -p "$repo/.kiln-dev" && rm -rf "$repo/.kiln-dev/images-logs" && cp -r "$logs" "$repo/.kiln-dev/images-logs"
    log "build logs kept in .kiln-dev/images-logs"
  fi
  rm -rf "$state"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wants() { case " ${images[*]} " in *" $1 "*) return 0 ;; esac; return 1; }

# The context of the kiln and nats-server images: static binaries and a
# minimal root file system.
ctx=$state/ctx
mkdir -p "$ctx/bin" "$ctx/rootfs/etc/ssl/certs" "$ctx/rootfs/home/nonroot" "$ctx/rootfs/tmp"
chmod 1777 "$ctx/rootfs/tmp"
cp deploy/docker/Dockerfile "$ctx/Dockerfile"
cp /etc/ssl/certs/ca-certificates.crt "$ctx/rootfs/etc/ssl/certs/"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > "$ctx/rootfs/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' > "$ctx/rootfs/etc/group"
# The kiln CLI image (deploy/docker/cli.Dockerfile) adds a static busybox,
# the shell CI runners start a job's script with.
if wants kiln; then
  mkdir -p "$ctx/cli"
  cp deploy/docker/cli.Dockerfile "$ctx/cli.Dockerfile"
  busybox=$(command -v busybox) || die "busybox is missing: the kiln image copies the host's static busybox (make dev-env installs busybox-static)"
  cp -L "$busybox" "$ctx/cli/busybox"
fi

declare -A pkg=(
  [kilnd]=./cmd/kilnd [kiln]=./sdk/cmd/kiln [kiln-gateway]=./gateway/cmd/kiln-gateway
  [kiln-scheduler]=./scheduler/cmd/kiln-scheduler [kiln-agent]=./agent/cmd/kiln-agent
)
for b in kilnd kiln kiln-gateway kiln-scheduler kiln-agent; do
  wants "$b" || continue
  log "go build $b (static)"
  CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$ctx/bin/$b" "${pkg[$b]}"
done
if wants nats-server; then
  log "go install nats-server@$NATS_SERVER_VERSION (static)"
  CGO_ENABLED=0 GOBIN="$ctx/bin" go install -trimpath -ldflags '-s -w' "github.com/nats-io/nats-server/v2@$NATS_SERVER_VERSION"
fi

# host_rootfs DIR BINARY... copies the host's binaries into DIR/rootfs/usr/bin
# with the shared libraries ldd names, for the images made from Debian's
# packages (engine, registry).
host_rootfs() {
  local dir=$1 b src lib; shift
  mkdir -p "$dir/rootfs/usr/bin" "$dir/rootfs/etc/ssl/certs" "$dir/rootfs/tmp"
  chmod 1777 "$dir/rootfs/tmp"
  cp "$ctx/rootfs/etc/passwd" "$ctx/rootfs/etc/group" "$dir/rootfs/etc/"
  cp /etc/ssl/certs/ca-certificates.crt "$dir/rootfs/etc/ssl/certs/"
  for b in "$@"; do
    src=$(command -v "$b") || die "$b is missing: the $(basename "$dir") image copies the host's (make dev-env installs it)"
    cp -L "$src" "$dir/rootfs/usr/bin/$b"
    # ldd lines: "libx.so => /path (addr)" or "/lib64/ld-linux… (addr)".
    for lib in $(ldd "$src" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
      mkdir -p "$dir/rootfs$(dirname "$lib")"
      cp -L "$lib" "$dir/rootfs$lib"
    done
  done
}

# The engine: Debian's dockerd, containerd and runc.
if wants engine; then
  host_rootfs "$state/engine" dockerd containerd containerd-shim-runc-v2 runc docker-init
  mkdir -p "$state/engine/rootfs/run" "$state/engine/rootfs/var/lib/docker"
  cp deploy/docker/engine.Dockerfile "$state/engine/Dockerfile"
fi

# The registry: Debian's docker-registry, storing on /home/nonroot/registry.
if wants registry; then
  host_rootfs "$state/registry" docker-registry
  mkdir -p "$state/registry/rootfs/etc/docker/registry" "$state/registry/rootfs/home/nonroot/registry"
  cat > "$state/registry/rootfs/etc/docker/registry/config.yml" <<'YML'
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: /home/nonroot/registry
  delete:
    enabled: true
http:
  addr: :5000
YML
  cp deploy/docker/registry.Dockerfile "$state/registry/Dockerfile"
fi

# The farm that builds the images.
gateway=${KILN_GATEWAY:-}
if [ -z "$gateway" ]; then
  ready=$state/kilnd/ready.json
  mkdir -p "$state/kilnd"
  "$BIN/kilnd" --listen 127.0.0.1:0 --http-listen 127.0.0.1:0 --nats-listen 127.0.0.1:0 \
    --data-dir "$state/kilnd/data" --ready-file "$ready" --name images >"$logs/kilnd.log" 2>&1 &
  kilnd_pid=$!
  for _ in $(seq 1 600); do
    [ -s "$ready" ] && break
    kill -0 "$kilnd_pid" 2>/dev/null || { tail -20 "$logs/kilnd.log" >&2; die "kilnd exited before it was ready"; }
    sleep 0.1
  done
  [ -s "$ready" ] || die "kilnd was not ready within 60s (log: $logs/kilnd.log)"
  gateway=$(sed -E 's/.*"grpc":"([^"]+)".*/\1/' "$ready")
  log "started kilnd (pid $kilnd_pid) on $gateway"
fi

push=()
[ "$PUSH" = 0 ] || push=(--push)
for img in "${images[@]}"; do
  ref=$PREFIX$img:$TAG
  if [ "$img" = engine ] || [ "$img" = registry ]; then
    args=("$state/$img")
  elif [ "$img" = kiln ]; then
    args=(-f "$ctx/cli.Dockerfile" "$ctx")
  else
    args=(--build-arg "BIN=$img" "$ctx")
  fi
  start=$SECONDS
  if ! "$BIN/kiln" build --gateway "$gateway" --progress plain -t "$ref" "${push[@]}" \
      --metadata-file "$logs/$img.json" "${args[@]}" >"$logs/$img.log" 2>&1; then
    failed=1
    tail -30 "$logs/$img.log" >&2
    die "kiln build of $img failed (log: $logs/$img.log)"
  fi
  digest=$(sed -nE 's/.*"containerimage.digest": *"([^"]+)".*/\1/p' "$logs/$img.json")
  log "built $ref in $((SECONDS - start))s${digest:+ ($digest)}"
  printf '%s\n' "$ref"
done
